// Airlock's playground: a page the daemon serves at /playground/, speaking only the public /v1
// API of the same origin (no CDN, no other host).
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";
import { Prec } from "@codemirror/state";
import { python } from "@codemirror/lang-python";

const $ = (sel) => document.querySelector(sel);
const KEY = "airlock.apiKey";
const SESSION = "airlock.session";

const starter = `# Ctrl-Enter runs. "Run once" streams output from a fresh sandbox;
# "Session" keeps variables between runs and shows plots inline.
import time
for i in range(3):
    print("tick", i, flush=True)
    time.sleep(0.3)
print(sum(range(100)))
`;

// The editor lives in a shadow root: there CodeMirror's styles are constructed style sheets
// (adoptedStyleSheets), which the page's CSP (default-src 'self', no inline styles) allows,
// where in the document itself they would be inline <style> elements it blocks.
const shadow = $("#editor").attachShadow({ mode: "open" });
const editor = new EditorView({
  doc: starter,
  root: shadow,
  parent: shadow,
  extensions: [
    basicSetup,
    python(),
    EditorView.theme({
      "&": { height: "100%" },
      ".cm-scroller": { fontFamily: "ui-monospace, monospace", fontSize: "13px", lineHeight: "1.5" },
    }),
    Prec.highest(keymap.of([{ key: "Mod-Enter", run: () => { run(); return true; } }])),
  ],
});
window.airlockEditor = editor; // for tests and the console

// --- the API -------------------------------------------------------------------------------

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

let keyPrompt = null;

// askKey shows the key dialog once, whoever asks; it resolves false when cancelled.
function askKey(message) {
  if (keyPrompt) return keyPrompt;
  const dlg = $("#key-dialog");
  $("#key-error").textContent = message || "";
  $("#key-input").value = "";
  keyPrompt = new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      keyPrompt = null;
      if (dlg.returnValue === "ok" && $("#key-input").value) {
        sessionStorage.setItem(KEY, $("#key-input").value);
        resolve(true);
      } else resolve(false);
    }, { once: true });
  });
  dlg.showModal();
  return keyPrompt;
}

// api does one request; on 401 it asks for a key (unless quiet) and retries with it.
async function api(method, path, { json, body, headers = {}, quiet = false } = {}) {
  for (;;) {
    const h = { ...headers };
    const key = sessionStorage.getItem(KEY);
    if (key) h.Authorization = "Bearer " + key;
    if (json !== undefined) { h["Content-Type"] = "application/json"; body = JSON.stringify(json); }
    const resp = await fetch(path, { method, headers: h, body });
    if (resp.ok) return resp;
    let code = "internal", message = resp.statusText;
    try { const e = (await resp.json()).error; code = e.code; message = e.message; } catch (_) { /* not JSON */ }
    if (resp.status === 401 && !quiet) {
      if (await askKey(key ? "That key was refused." : "")) continue;
    }
    throw new APIError(resp.status, code, message);
  }
}

const apiJSON = async (method, path, opts) => {
  const r = await api(method, path, opts);
  return r.status === 204 ? null : r.json();
};

// --- output --------------------------------------------------------------------------------

const out = $("#output");

function emit(text, cls) {
  const span = document.createElement("span");
  if (cls) span.className = cls;
  span.textContent = text;
  out.appendChild(span);
  out.scrollTop = out.scrollHeight;
}

function emitImage(mime, b64) {
  const img = document.createElement("img");
  img.src = `data:${mime};base64,${b64}`;
  img.alt = "plot";
  out.appendChild(img);
  out.scrollTop = out.scrollHeight;
}

const status = (s) => { $("#status").textContent = s; };

// --- running -------------------------------------------------------------------------------

let busy = false;
const mode = () => document.querySelector('input[name="mode"]:checked').value;

async function run() {
  if (busy) return;
  busy = true;
  $("#run").disabled = true;
  out.replaceChildren();
  const code = editor.state.doc.toString();
  try {
    if (mode() === "once") await runOnce(code);
    else await runCell(code);
  } catch (e) {
    emit(`\n${e.code || "error"}: ${e.message}\n`, "stderr");
    status("failed");
  } finally {
    busy = false;
    $("#run").disabled = false;
    $("#interrupt").disabled = true;
    refreshSandboxes();
  }
}

// runOnce streams a one-shot run: POST /v1/execute with Accept: application/x-ndjson gives
// stdout and stderr chunks as they are written, then the result. PNG files the program writes
// in /workspace come back as output files and are shown.
async function runOnce(code) {
  status("running in a fresh sandbox…");
  const resp = await api("POST", "/v1/execute", {
    json: { code, language: "python", timeout: 60, output_files: ["*.png"] },
    headers: { Accept: "application/x-ndjson" },
  });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim()) onEvent(JSON.parse(line));
    }
  }
}

function onEvent(ev) {
  switch (ev.type) {
    case "stdout": emit(ev.data); break;
    case "stderr": emit(ev.data, "stderr"); break;
    case "result": {
      const r = ev.result;
      for (const f of r.files || []) if (f.mime === "image/png") emitImage(f.mime, f.data);
      const why = r.timed_out ? " (timed out)" : r.oom_killed ? " (memory limit)" : "";
      status(`exit ${r.exit_code}${why} · ${r.execution_time.toFixed(2)} s · peak ${r.peak_memory_mb.toFixed(0)} MiB`);
      break;
    }
    case "error": throw new APIError(0, ev.error.code, ev.error.message);
  }
}

let sessionId = sessionStorage.getItem(SESSION);

async function ensureSession() {
  if (sessionId) return sessionId;
  status("starting a session…");
  const info = await apiJSON("POST", "/v1/sessions", { json: { timeout: 3600, idle_timeout: 900 } });
  setSession(info.id);
  return sessionId;
}

function setSession(id) {
  sessionId = id;
  if (id) sessionStorage.setItem(SESSION, id); else sessionStorage.removeItem(SESSION);
  $("#session-id").textContent = id || "";
  $("#end-session").disabled = !id;
  refreshFiles();
}

async function runCell(code) {
  let r;
  for (let attempt = 0; ; attempt++) {
    const id = await ensureSession();
    status("running in session…");
    $("#interrupt").disabled = false;
    try {
      r = await apiJSON("POST", `/v1/sessions/${id}/run`, { json: { code, timeout: 120 } });
      break;
    } catch (e) {
      // The session ended (idle, expired, terminated elsewhere): start a new one, once.
      if (attempt === 0 && (e.status === 404 || e.status === 410)) { setSession(null); continue; }
      throw e;
    }
  }
  if (r.stdout) emit(r.stdout);
  if (r.stderr) emit(r.stderr, "stderr");
  for (const d of r.display || []) {
    if (d.mime.startsWith("image/") && d.mime !== "image/svg+xml") emitImage(d.mime, d.data);
    else emit(d.data + "\n");
  }
  if (r.result !== null && r.result !== undefined) emit(r.result + "\n", "result");
  if (r.error) emit(r.error.traceback.join("\n") + "\n", "stderr");
  if (r.restarted) emit(`[interpreter restarted: ${r.restart_reason}]\n`, "note");
  const what = r.interrupted ? "interrupted" : r.timed_out ? "timed out" : r.success ? "ok" : "error";
  status(`${what} · ${r.execution_time.toFixed(2)} s`);
  refreshFiles();
}

$("#run").addEventListener("click", run);
$("#clear").addEventListener("click", () => { out.replaceChildren(); status(""); });
$("#interrupt").addEventListener("click", () => {
  if (sessionId) apiJSON("POST", `/v1/sessions/${sessionId}/interrupt`).catch(() => {});
});
$("#end-session").addEventListener("click", async () => {
  const id = sessionId;
  setSession(null);
  if (id) await apiJSON("DELETE", `/v1/sessions/${id}`).catch(() => {});
  refreshSandboxes();
});
$("#key-button").addEventListener("click", () => askKey(""));

// --- files of the session's sandbox -------------------------------------------------------

const filesList = $("#files");
const q = encodeURIComponent;

async function refreshFiles() {
  if (!sessionId) {
    filesList.innerHTML = '<li class="empty">Start a session to see its files.</li>';
    return;
  }
  const dir = $("#files-path").value || "/workspace";
  try {
    const list = await apiJSON("GET", `/v1/sandboxes/${sessionId}/files/list?path=${q(dir)}`, { quiet: true });
    filesList.replaceChildren();
    if (dir !== "/") filesList.appendChild(fileRow({ name: "..", type: "dir", path: dir.replace(/\/[^/]+\/?$/, "") || "/" }));
    for (const f of list.entries) filesList.appendChild(fileRow(f));
    if (!list.entries.length) filesList.insertAdjacentHTML("beforeend", '<li class="empty">(empty)</li>');
  } catch (e) {
    filesList.innerHTML = "";
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = e.message;
    filesList.appendChild(li);
  }
}

function fileRow(f) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.textContent = f.type === "dir" ? f.name + "/" : f.name;
  a.addEventListener("click", () => {
    if (f.type === "dir") { $("#files-path").value = f.path; refreshFiles(); } else download(f);
  });
  const size = document.createElement("span");
  size.textContent = f.type === "dir" ? "" : `${f.size} B`;
  li.append(a, size);
  return li;
}

async function download(f) {
  const resp = await api("GET", `/v1/sandboxes/${sessionId}/files?path=${q(f.path)}`);
  const url = URL.createObjectURL(await resp.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = f.name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

$("#files-refresh").addEventListener("click", refreshFiles);
$("#files-path").addEventListener("keydown", (e) => { if (e.key === "Enter") refreshFiles(); });
$("#upload").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  try {
    const id = await ensureSession();
    const dir = ($("#files-path").value || "/workspace").replace(/\/$/, "");
    await api("PUT", `/v1/sandboxes/${id}/files?path=${q(dir + "/" + file.name)}`, { body: file });
  } catch (err) {
    status(`upload: ${err.message}`);
  }
  e.target.value = "";
  refreshFiles();
});

// --- the live list of sandboxes ------------------------------------------------------------

async function refreshSandboxes() {
  let list;
  try {
    list = await apiJSON("GET", "/v1/sandboxes", { quiet: true });
  } catch (_) { return; }
  const body = $("#sandboxes tbody");
  body.replaceChildren();
  for (const s of list.sandboxes) {
    const tr = document.createElement("tr");
    const u = s.usage || {};
    const kind = s.tags && s.tags["airlock.session"] ? "session" : "sandbox";
    for (const v of [s.id, kind + (s.id === sessionId ? " (this)" : ""), (u.cpu_time ?? 0).toFixed(2),
      (u.memory_mb ?? 0).toFixed(1), u.processes ?? ""]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.textContent = "end";
    b.title = "terminate";
    b.addEventListener("click", async () => {
      await apiJSON("DELETE", `/v1/sandboxes/${s.id}`).catch(() => {});
      if (s.id === sessionId) setSession(null);
      refreshSandboxes();
    });
    td.appendChild(b);
    tr.appendChild(td);
    body.appendChild(tr);
  }
  if (!list.sandboxes.length) body.innerHTML = '<tr><td colspan="6" class="empty">none running</td></tr>';
}

// --- start ---------------------------------------------------------------------------------

(async () => {
  try {
    await apiJSON("GET", "/v1/info"); // asks for a key when the daemon has keys
  } catch (e) {
    status(`daemon: ${e.message}`);
  }
  setSession(sessionId);
  refreshSandboxes();
  setInterval(refreshSandboxes, 2000);
})();
