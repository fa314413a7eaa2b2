// Checks run by internal/e2e/e2b_test.go with the stock npm `e2b` and `@e2b/code-interpreter`
// SDKs against a real Airlock daemon (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY in the
// environment). `node checks.mjs NAME [ARG…]` runs one check and prints one JSON object on
// stdout; the Go test asserts on it. Failures a check expects are reported as {error, name},
// not thrown.
import { Sandbox, CommandExitError } from "e2b";
import { Sandbox as CodeSandbox } from "@e2b/code-interpreter";

function failure(e) {
  return { error: String(e?.message ?? e), name: e?.constructor?.name, exitCode: e?.exitCode, stderr: e?.stderr };
}

// attempt runs fn and returns its value, or the failure it threw.
async function attempt(fn) {
  try {
    return { ok: await fn() };
  } catch (e) {
    return failure(e);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const checks = {
  // commands: foreground, exit codes, streaming, background + kill, envs and cwd, stdin, list.
  async commands() {
    const sb = await Sandbox.create({ timeoutMs: 120000 });
    try {
      const echo = await sb.commands.run("echo hello");
      const exit = await attempt(() => sb.commands.run("echo partial; echo oops >&2; exit 3"));
      let exitError = null;
      try {
        await sb.commands.run("exit 5");
      } catch (e) {
        exitError = { isCommandExitError: e instanceof CommandExitError, exitCode: e.exitCode, name: e.constructor.name };
      }
      const chunks = { stdout: [], stderr: [] };
      const streamed = await sb.commands.run("for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.2; done", {
        onStdout: (d) => chunks.stdout.push(d),
        onStderr: (d) => chunks.stderr.push(d),
      });
      const env = await sb.commands.run('echo "$FOO" && pwd', { envs: { FOO: "bar" }, cwd: "/tmp" });

      const bg = await sb.commands.run("sleep 60", { background: true });
      const listed = (await sb.commands.list()).map((p) => p.pid);
      const killed = await bg.kill();
      const bgWait = await attempt(() => bg.wait());
      const killMissing = await sb.commands.kill(999999);

      // The stream's timeout ends the stream, not the command: a second stream reattaches.
      const late = await sb.commands.run("sleep 3; echo late", { background: true, timeoutMs: 500 });
      const cut = await attempt(() => late.wait());
      const again = await sb.commands.connect(late.pid);
      const lateResult = await again.wait();

      const cat = await sb.commands.run("cat", { background: true, stdin: true });
      await sb.commands.sendStdin(cat.pid, "hi from stdin\n");
      await sb.commands.closeStdin(cat.pid);
      const catResult = await cat.wait();

      return {
        sandboxId: sb.sandboxId,
        echo: { stdout: echo.stdout, exitCode: echo.exitCode },
        exit,
        exitError,
        streamed: { stdout: streamed.stdout, stderr: streamed.stderr, chunks },
        env: env.stdout,
        background: { pid: bg.pid, listed: listed.includes(bg.pid), killed, wait: bgWait, killMissing },
        stdin: catResult.stdout,
        reattach: { cut: cut.name, pid: again.pid === late.pid, stdout: lateResult.stdout, exitCode: lateResult.exitCode },
      };
    } finally {
      await sb.kill();
    }
  },

  // pty: a terminal, typed into and resized.
  async pty() {
    const sb = await Sandbox.create({ timeoutMs: 60000 });
    try {
      const dec = new TextDecoder();
      let out = "";
      const term = await sb.pty.create({ cols: 80, rows: 24, onData: (d) => (out += dec.decode(d, { stream: true })) });
      await sb.pty.resize(term.pid, { cols: 100, rows: 30 });
      await sb.pty.sendInput(term.pid, new TextEncoder().encode("stty size; echo pty-$((6*7)); exit 7\n"));
      const end = await attempt(() => term.wait());
      return { out, end };
    } finally {
      await sb.kill();
    }
  },

  // files: text and bytes, read, list, makeDir, exists, remove, rename, multi-file write.
  async files() {
    const sb = await Sandbox.create({ timeoutMs: 120000 });
    try {
      const f = sb.files;
      const wrote = await f.write("/tmp/e2b/dir/hello.txt", "hello files");
      const text = await f.read("/tmp/e2b/dir/hello.txt");
      const bytesIn = new Uint8Array([0, 1, 2, 253, 254, 255]);
      await f.write("/tmp/e2b/bin.dat", bytesIn.buffer);
      const bytesOut = Array.from(await f.read("/tmp/e2b/bin.dat", { format: "bytes" }));
      const multi = await f.write([
        { path: "/tmp/e2b/m/a.txt", data: "A" },
        { path: "/tmp/e2b/m/b.txt", data: "B" },
      ]);
      const mkdir = await f.makeDir("/tmp/e2b/newdir/sub");
      const mkdirAgain = await f.makeDir("/tmp/e2b/newdir/sub");
      const list = (await f.list("/tmp/e2b")).map((e) => ({ name: e.name, type: e.type, path: e.path }));
      const existsBefore = await f.exists("/tmp/e2b/bin.dat");
      await f.remove("/tmp/e2b/bin.dat");
      const existsAfter = await f.exists("/tmp/e2b/bin.dat");
      await f.remove("/tmp/e2b/m");
      const dirGone = await f.exists("/tmp/e2b/m");
      const renamed = await f.rename("/tmp/e2b/dir/hello.txt", "/tmp/e2b/moved.txt");
      const movedText = await f.read("/tmp/e2b/moved.txt");
      const info = await f.getInfo("/tmp/e2b/moved.txt");
      const missing = await attempt(() => f.read("/tmp/e2b/nope.txt"));
      // Written through the API, read by a command: the same file system.
      const cat = await sb.commands.run("cat /tmp/e2b/moved.txt");
      return {
        wrote: { path: wrote.path, name: wrote.name },
        text,
        bytesOut,
        multi: multi.map((m) => m.path),
        mkdir,
        mkdirAgain,
        list,
        existsBefore,
        existsAfter,
        dirGone,
        renamed: renamed.path,
        movedText,
        info: { name: info.name, type: info.type, size: info.size },
        missing,
        cat: cat.stdout,
      };
    } finally {
      await sb.kill();
    }
  },

  // timeouts: setTimeout moves endAt; a sandbox whose timeout expires is gone for every call.
  async timeouts() {
    const sb = await Sandbox.create({ timeoutMs: 60000 });
    const before = await sb.getInfo();
    await sb.setTimeout(2000);
    const after = await sb.getInfo();
    const deadline = Date.now() + 60000;
    let running = true;
    while (Date.now() < deadline && (running = await sb.isRunning())) {
      await sleep(250);
    }
    const listed = (await Sandbox.list().nextItems()).some((s) => s.sandboxId === sb.sandboxId);
    return {
      sandboxId: sb.sandboxId,
      endBefore: before.endAt,
      endAfter: after.endAt,
      startedAt: after.startedAt,
      running,
      listed,
      info: await attempt(() => sb.getInfo()),
      command: await attempt(() => sb.commands.run("echo still here")),
    };
  },

  // create: a sandbox with metadata left running, for the test to look at through /v1.
  async create() {
    const sb = await Sandbox.create({ timeoutMs: 120000, metadata: { suite: "e2b-e2e" } });
    await sb.files.write("/tmp/marker.txt", "made through E2B");
    return { sandboxId: sb.sandboxId };
  },

  // connect ARG: connect by id from a second process, list by metadata, then kill.
  async connect(id) {
    const sb = await Sandbox.connect(id);
    const marker = await sb.files.read("/tmp/marker.txt");
    const run = await sb.commands.run("echo connected");
    const listed = (await Sandbox.list({ query: { metadata: { suite: "e2b-e2e" } } }).nextItems()).map((s) => s.sandboxId);
    const other = (await Sandbox.list({ query: { metadata: { suite: "other" } } }).nextItems()).length;
    const info = await sb.getInfo();
    const killed = await Sandbox.kill(id);
    const killedAgain = await Sandbox.kill(id);
    return { marker, run: run.stdout, listed, other, templateId: info.templateId, killed, killedAgain };
  },

  // refused ARG: what a caller with the wrong key, or another key's, gets for sandbox ARG.
  async refused(id) {
    return {
      create: await attempt(async () => {
        const sb = await Sandbox.create({ timeoutMs: 10000 });
        await sb.kill();
        return sb.sandboxId;
      }),
      connect: await attempt(() => Sandbox.connect(id)),
      info: await attempt(() => Sandbox.getInfo(id)),
      kill: await attempt(() => Sandbox.kill(id)),
      list: await attempt(async () => (await Sandbox.list().nextItems()).map((s) => s.sandboxId)),
      badTemplate: await attempt(() => Sandbox.create("no-such-template", { timeoutMs: 10000 })),
    };
  },

  // interpreter: state across cells, a matplotlib PNG, an error with its name, streaming.
  async interpreter() {
    const sb = await CodeSandbox.create({ timeoutMs: 120000 });
    try {
      await sb.runCode("x = 41");
      const state = await sb.runCode("x + 1");
      const plot = await sb.runCode(
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()",
      );
      const err = await sb.runCode("1 / 0");
      const out = { stdout: [], stderr: [] };
      const streamed = await sb.runCode("import sys\nprint('to out')\nprint('to err', file=sys.stderr)", {
        onStdout: (m) => out.stdout.push(m.line),
        onStderr: (m) => out.stderr.push(m.line),
      });
      const html = await sb.runCode("class Bold:\n    def _repr_html_(self):\n        return '<b>bold</b>'\nBold()");
      const contexts = await attempt(async () => (await sb.listCodeContexts()).map((c) => c.id));
      return {
        state: state.text,
        png: plot.results.filter((r) => r.png).map((r) => r.png.slice(0, 12)),
        error: err.error && { name: err.error.name, value: err.error.value, traceback: err.error.traceback.length > 0 },
        streamed: { logs: streamed.logs, callbacks: out },
        html: html.results.map((r) => r.html ?? r.text),
        contexts,
      };
    } finally {
      await sb.kill();
    }
  },

  // bench N: N rounds of create → commands.run echo → kill, each timed in ms.
  async bench(n) {
    const ms = [];
    for (let i = 0; i < Number(n); i++) {
      const t0 = performance.now();
      const sb = await Sandbox.create({ timeoutMs: 60000 });
      const r = await sb.commands.run("echo hi");
      await sb.kill();
      if (r.stdout !== "hi\n") throw new Error(`echo said ${JSON.stringify(r.stdout)}`);
      ms.push(performance.now() - t0);
    }
    return { ms };
  },
};

const [name, ...args] = process.argv.slice(2);
const check = checks[name];
if (!check) {
  console.error(`no check ${name}; have ${Object.keys(checks).join(", ")}`);
  process.exit(2);
}
try {
  console.log(JSON.stringify(await check(...args)));
} catch (e) {
  console.log(JSON.stringify({ thrown: failure(e), stack: String(e?.stack) }));
  process.exit(1);
}
