// Drives the playground in headless Chromium with playwright-core (pinned in
// web/playground/package-lock.json), for internal/e2e/playground_test.go:
//   PLAYGROUND_URL, PLAYGROUND_KEY, PLAYGROUND_OUT (screenshot dir), CHROMIUM.
// It prints one JSON object: what it saw, for the Go test to check.
import { chromium } from "playwright-core";

const base = process.env.PLAYGROUND_URL;
const origin = new URL(base).origin;
const outDir = process.env.PLAYGROUND_OUT;
const seen = { problems: [], offOrigin: [], steps: [] };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  page.setDefaultTimeout(Number(process.env.PLAYGROUND_STEP_TIMEOUT_MS || 90000));
  await page.addInitScript(() => document.addEventListener("securitypolicyviolation", (e) =>
    console.error(`CSP ${e.violatedDirective} blocked ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber} ${e.sample}`)));
  seen.failed = [];
  page.on("response", async (r) => {
    if (r.status() >= 400) seen.failed.push(`${r.status()} ${r.request().method()} ${r.url()} auth=${(await r.request().allHeaders())["authorization"] || ""}`);
  });
  // The 401s of the key prompt are expected; any other console error is a problem.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("status of 401")) seen.problems.push("console: " + m.text());
  });
  page.on("pageerror", (e) => seen.problems.push("pageerror: " + e.message));
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (u.protocol !== "data:" && u.protocol !== "blob:" && u.origin !== origin) seen.offOrigin.push(r.url());
  });

  const resp = await page.goto(base + "/");
  seen.url = page.url();
  seen.csp = (await resp.allHeaders())["content-security-policy"] || "";

  // Keys are on: the page asks. A wrong key is refused and asked again.
  await page.waitForSelector("#key-dialog[open]");
  await page.fill("#key-input", "not-the-key");
  await page.click("#key-save");
  await page.waitForFunction(() => document.querySelector("#key-dialog").open &&
    document.querySelector("#key-error").textContent.includes("refused"));
  seen.steps.push("wrong key refused");
  await page.fill("#key-input", process.env.PLAYGROUND_KEY);
  await page.click("#key-save");
  await page.waitForFunction(() => !document.querySelector("#key-dialog").open);
  seen.keyStored = await page.evaluate(() => sessionStorage.getItem("airlock.apiKey") !== null);

  // Type a program (lines without indentation: the editor auto-indents) and run it once.
  const setCode = async (code) => {
    await page.click("#editor .cm-content");
    await page.keyboard.press("Control+A");
    await page.keyboard.press("Delete");
    await page.keyboard.type(code);
  };
  // The PNG it writes in /workspace (a 1×1 dot) comes back as an output file and is shown.
  await setCode('import base64, time\nprint("first line", flush=True)\ntime.sleep(2)\nprint("after", 6 * 7)\n' +
    'open("dot.png", "wb").write(base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="))\n');
  seen.highlighted = await page.evaluate(() =>
    [...document.querySelector("#editor").shadowRoot.querySelectorAll(".cm-line span")].some((s) => s.textContent === "import" && getComputedStyle(s).color !== getComputedStyle(s.parentElement).color));
  await page.click("#run");
  // Streamed: the first line shows while the program still sleeps.
  await page.waitForFunction(() => document.querySelector("#output").textContent.includes("first line"));
  seen.streamed = !(await page.textContent("#output")).includes("after 42");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("exit"));
  seen.onceOutput = await page.textContent("#output");
  seen.onceStatus = await page.textContent("#status");
  seen.onceImages = await page.$$eval("#output img", (imgs) => imgs.map((i) => i.naturalWidth));
  await page.screenshot({ path: outDir + "/playground-once.png" });

  // A session: state across runs, a matplotlib plot inline, the file panel.
  await page.check('input[value="session"]');
  await setCode("x = 41\n");
  await page.click("#run");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("ok"));
  await setCode(
    'import matplotlib.pyplot as plt\nplt.figure(figsize=(5, 3))\nplt.plot([1, 4, 2, 8], marker="o")\nplt.title("x + 1 = %d" % (x + 1))\n' +
    'open("/workspace/result.txt", "w").write("answer %d" % (x + 1))\nplt.show()\n');
  await page.click("#run");
  await page.waitForSelector("#output img");
  seen.image = await page.evaluate(() => {
    const img = document.querySelector("#output img");
    return { src: img.src.slice(0, 22), width: img.naturalWidth, height: img.naturalHeight };
  });
  await page.waitForFunction(() => [...document.querySelectorAll("#files a")].some((a) => a.textContent === "result.txt"));
  seen.files = await page.$$eval("#files a", (as) => as.map((a) => a.textContent));
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.click("#files a >> text=result.txt"),
  ]);
  seen.downloaded = (await (await download.createReadStream()).toArray()).join("");
  await page.setInputFiles("#upload", { name: "uploaded.csv", mimeType: "text/csv", buffer: Buffer.from("a,b\n1,2\n") });
  await page.waitForFunction(() => [...document.querySelectorAll("#files a")].some((a) => a.textContent === "uploaded.csv"));
  await setCode('print(open("/workspace/uploaded.csv").read())\n');
  await page.click("#run");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("ok"));
  seen.uploadedReadBack = await page.textContent("#output");
  // Back to the plot for the picture.
  await setCode(
    'import numpy as np\nimport matplotlib.pyplot as plt\nt = np.linspace(0, 4 * np.pi, 400)\nplt.figure(figsize=(6, 2.6))\n' +
    'plt.plot(t, np.sin(t) * np.exp(-t / 8))\nplt.title("a plot from a session")\nprint("x is still", x)\nplt.show()\n');
  await page.click("#run");
  await page.waitForSelector("#output img");
  // The sandbox list shows the session with its usage.
  await page.waitForFunction(() => [...document.querySelectorAll("#sandboxes tbody td")].some((td) => td.textContent === "session (this)"));
  seen.sandboxRows = await page.$$eval("#sandboxes tbody tr", (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  await page.screenshot({ path: outDir + "/playground.png" });
  seen.steps.push("done");
} catch (e) {
  seen.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
