// Checks run by internal/e2e/modal_test.go with the stock npm `modal` SDK against a real
// Airlock daemon (MODAL_SERVER_URL, MODAL_TOKEN_ID, MODAL_TOKEN_SECRET in the environment).
// `node checks.mjs NAME [ARG]` runs one check and prints one JSON object on stdout; the Go
// test asserts on it. Failures the check expects are reported as {error, name}, not thrown.
import { ModalClient } from "modal";

const IMAGE = process.env.MODAL_E2E_IMAGE;
const modal = new ModalClient();

async function sandbox(params = {}) {
  const app = await modal.apps.fromName("airlock-e2e", { createIfMissing: true });
  const image = modal.images.fromRegistry(IMAGE);
  return await modal.sandboxes.create(app, image, { blockNetwork: true, timeoutMs: 60000, ...params });
}

function failure(e) {
  return { error: String(e.message ?? e), name: e.constructor?.name, code: e.code };
}

// executeCode is the seed's execute_code, ported to the JS SDK as it stands: image, timeout,
// memory, block_network, the code file written, python run, stdout/stderr/returncode, and
// terminate.
async function executeCode(code, timeout = 30, allowNetwork = false, memoryMb = 512) {
  const app = await modal.apps.fromName("code-executor", { createIfMissing: true });
  const sb = await modal.sandboxes.create(app, modal.images.fromRegistry(IMAGE), {
    timeoutMs: timeout * 1000,
    memoryMiB: memoryMb,
    blockNetwork: !allowNetwork,
  });
  try {
    await sb.filesystem.writeText(code, "/tmp/user_code.py");
    const p = await sb.exec(["python", "/tmp/user_code.py"], { timeoutMs: timeout * 1000 });
    const returncode = await p.wait();
    const stdout = await p.stdout.readText();
    const stderr = await p.stderr.readText();
    return { success: returncode === 0, stdout, stderr, returncode, sandboxId: sb.sandboxId };
  } catch (e) {
    return { success: false, stdout: "", stderr: String(e.message ?? e), returncode: -1 };
  } finally {
    await sb.terminate();
  }
}

const checks = {
  async seed() {
    const ok = await executeCode("import sys\nprint(6*7)\nprint('to stderr', file=sys.stderr)\n");
    const fail = await executeCode("raise SystemExit(3)\n");
    const net = await executeCode(
      "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('CONNECTED')\nexcept OSError as e:\n    print('blocked', type(e).__name__)\n",
    );
    return { ok, fail, net };
  },

  async stdin() {
    const sb = await sandbox();
    try {
      const p = await sb.exec(["cat"]);
      await p.stdin.writeText("hello ");
      await p.stdin.writeText("stdin\n");
      await p.stdin.close();
      const code = await p.wait();
      return { code, stdout: await p.stdout.readText() };
    } finally {
      await sb.terminate();
    }
  },

  async envWorkdir() {
    const sb = await sandbox({ env: { SANDBOX_VAR: "from-create" }, workdir: "/tmp" });
    try {
      const p = await sb.exec(["sh", "-c", 'echo "$SANDBOX_VAR $EXEC_VAR $(pwd)"'], { env: { EXEC_VAR: "from-exec" } });
      await p.wait();
      const q = await sb.exec(["pwd"], { workdir: "/etc" });
      await q.wait();
      return { first: await p.stdout.readText(), second: await q.stdout.readText() };
    } finally {
      await sb.terminate();
    }
  },

  async execTimeout() {
    const sb = await sandbox();
    try {
      const p = await sb.exec(["sleep", "30"], { timeoutMs: 1000 });
      try {
        return { code: await p.wait() };
      } catch (e) {
        return failure(e);
      }
    } finally {
      await sb.terminate();
    }
  },

  async sandboxTimeout() {
    const sb = await sandbox({ timeoutMs: 2000 });
    return { code: await sb.wait() };
  },

  async files() {
    const sb = await sandbox();
    try {
      const fs = sb.filesystem;
      await fs.makeDirectory("/tmp/d/e");
      await fs.writeText("text file\n", "/tmp/d/e/a.txt");
      await fs.writeBytes(new Uint8Array([0, 1, 2, 255]), "/tmp/d/b.bin");
      const text = await fs.readText("/tmp/d/e/a.txt");
      const bytes = Array.from(await fs.readBytes("/tmp/d/b.bin"));
      const list = (await fs.listFiles("/tmp/d")).map((f) => `${f.name}:${f.type}`).sort();
      const stat = await fs.stat("/tmp/d/e/a.txt");
      await fs.remove("/tmp/d", { recursive: true });
      let missing;
      try {
        await fs.readText("/tmp/d/e/a.txt");
      } catch (e) {
        missing = failure(e);
      }
      // What the files API wrote is what a process in the sandbox sees.
      await fs.writeText("seen by cat", "/tmp/seen.txt");
      const p = await sb.exec(["cat", "/tmp/seen.txt"]);
      await p.wait();
      return { text, bytes, list, size: stat.size, type: stat.type, missing, cat: await p.stdout.readText() };
    } finally {
      await sb.terminate();
    }
  },

  async fromId() {
    const sb = await sandbox({ tags: { suite: "modal-e2e" } });
    const again = await modal.sandboxes.fromId(sb.sandboxId);
    const p = await again.exec(["echo", "same sandbox"]);
    await p.wait();
    const listed = [];
    for await (const s of modal.sandboxes.list({ tags: { suite: "modal-e2e" } })) listed.push(s.sandboxId);
    const none = [];
    for await (const s of modal.sandboxes.list({ tags: { suite: "no-such-tag" } })) none.push(s.sandboxId);
    return { id: sb.sandboxId, stdout: await p.stdout.readText(), listed, none };
  },

  // afterTerminate keeps a sandbox for the Go side to check through /v1, then terminates it
  // and uses it again.
  async terminateThenUse(id) {
    const sb = id ? await modal.sandboxes.fromId(id) : await sandbox();
    await sb.terminate();
    const code = await sb.wait();
    let exec;
    try {
      const p = await sb.exec(["echo", "after"]);
      await p.wait();
      exec = { unexpected: await p.stdout.readText() };
    } catch (e) {
      exec = failure(e);
    }
    return { code, exec };
  },

  // dockerfile builds a layer with Airlock's spec builder (RUN, ENV, WORKDIR) and runs in it.
  async dockerfile() {
    const app = await modal.apps.fromName("airlock-e2e", { createIfMissing: true });
    const image = modal.images
      .fromRegistry(IMAGE)
      .dockerfileCommands(["RUN mkdir -p /opt/app && echo built > /opt/app/b.txt", "ENV BUILT=yes", "WORKDIR /opt/app"]);
    const sb = await modal.sandboxes.create(app, image, { blockNetwork: true });
    try {
      const p = await sb.exec(["sh", "-c", 'cat b.txt; echo "$BUILT"; pwd']);
      await p.wait();
      const out = { stdout: await p.stdout.readText(), imageId: image.imageId };
      try {
        await modal.sandboxes.create(app, modal.images.fromRegistry(IMAGE).dockerfileCommands(["USER nobody"]), {});
        out.unsupported = { unexpected: "built" };
      } catch (e) {
        out.unsupported = failure(e);
      }
      return out;
    } finally {
      await sb.terminate();
    }
  },

  // hostFile tries to read a file of the daemon's host through sb.filesystem and through cat.
  async hostFile(path) {
    const sb = await sandbox();
    try {
      const out = {};
      try {
        out.fs = { unexpected: await sb.filesystem.readText(path) };
      } catch (e) {
        out.fs = failure(e);
      }
      for (const p of [path, "/proc/1/root" + path, "../../../../.." + path]) {
        try {
          out["fs " + p] = { unexpected: await sb.filesystem.readText(p) };
        } catch (e) {
          out["fs " + p] = failure(e);
        }
      }
      const p = await sb.exec(["cat", path]);
      out.catCode = await p.wait();
      out.cat = await p.stdout.readText();
      return out;
    } finally {
      await sb.terminate();
    }
  },

  // create makes a sandbox and leaves it running; "open" leaves blockNetwork unset, as
  // Modal's default; "sized" asks for a CPU, memory and idle timeout.
  async create(kind) {
    const params = { timeoutMs: 120000 };
    if (kind === "open") params.blockNetwork = false;
    if (kind === "sized") Object.assign(params, { cpu: 0.5, memoryMiB: 256, idleTimeoutMs: 60000 });
    const sb = await sandbox(params);
    return { id: sb.sandboxId };
  },

  // useOther uses a sandbox id this key does not own.
  async useOther(id) {
    const sb = await modal.sandboxes.fromId(id);
    const out = {};
    try {
      const p = await sb.exec(["echo", "not yours"]);
      await p.wait();
      out.exec = { unexpected: await p.stdout.readText() };
    } catch (e) {
      out.exec = failure(e);
    }
    try {
      await sb.terminate();
      out.terminate = { unexpected: "terminated another key's sandbox" };
    } catch (e) {
      out.terminate = failure(e);
    }
    return out;
  },

  async wrongKey() {
    try {
      await modal.apps.fromName("airlock-e2e", { createIfMissing: true });
      return { unexpected: "accepted" };
    } catch (e) {
      return failure(e);
    }
  },

  async refused() {
    const out = {};
    for (const [what, params] of Object.entries({
      gpu: { gpu: "A10G" },
      memory: { memoryMiB: 1 << 30 },
      timeout: { timeoutMs: 1000 * 86400 * 30 },
    })) {
      try {
        const sb = await sandbox(params);
        await sb.terminate();
        out[what] = { unexpected: "created" };
      } catch (e) {
        out[what] = failure(e);
      }
    }
    try {
      const app = await modal.apps.fromName("airlock-e2e", { createIfMissing: true });
      await modal.sandboxes.create(app, modal.images.fromRegistry("no-such/image:1"), {});
      out.image = { unexpected: "created" };
    } catch (e) {
      out.image = failure(e);
    }
    try {
      await modal.apps.fromName("never-made-app");
      out.app = { unexpected: "found" };
    } catch (e) {
      out.app = failure(e);
    }
    return out;
  },

  // bench creates a sandbox, execs echo and terminates it N times, and reports each round's
  // milliseconds.
  async bench(n) {
    const app = await modal.apps.fromName("airlock-bench", { createIfMissing: true });
    const image = modal.images.fromRegistry(IMAGE);
    const ms = [];
    for (let i = 0; i < Number(n); i++) {
      const t0 = performance.now();
      const sb = await modal.sandboxes.create(app, image, { blockNetwork: true });
      const p = await sb.exec(["echo", "hi"]);
      await p.wait();
      await p.stdout.readText();
      await sb.terminate();
      ms.push(performance.now() - t0);
    }
    return { ms };
  },
};

const [name, arg] = process.argv.slice(2);
try {
  const out = await checks[name](arg);
  process.stdout.write(JSON.stringify(out) + "\n");
  modal.close();
  process.exit(0);
} catch (e) {
  process.stdout.write(JSON.stringify({ fatal: String(e.stack ?? e) }) + "\n");
  process.exit(1);
}
