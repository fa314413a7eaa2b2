"""End-to-end tests against a real daemon: AIRLOCK_SERVER (and AIRLOCK_API_KEY when keys are on).
internal/e2e/pyclient_test.go starts the daemon and runs these; without AIRLOCK_SERVER they skip."""

import os
import unittest

import airlock

SERVER = os.environ.get("AIRLOCK_SERVER")


@unittest.skipUnless(SERVER, "needs AIRLOCK_SERVER (run by internal/e2e/pyclient_test.go)")
class SandboxTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sb = airlock.Sandbox.create(timeout=120, memory=256, block_network=True, env={"GREETING": "hi"})

    @classmethod
    def tearDownClass(cls):
        cls.sb.terminate()

    def test_exec_output_and_returncode(self):
        p = self.sb.exec("sh", "-c", 'echo "$GREETING out"; echo err >&2; exit 3')
        self.assertEqual(p.wait(), 3)
        self.assertEqual(p.returncode, 3)
        self.assertEqual(p.stdout.read(), "hi out\n")
        self.assertEqual(p.stderr.read(), "err\n")

    def test_stdin(self):
        p = self.sb.exec("cat")
        p.stdin.write("line one\n")
        p.stdin.drain()
        p.stdin.write(b"line two\n")
        p.stdin.write_eof()
        self.assertEqual(list(p.stdout), ["line one\n", "line two\n"])
        self.assertEqual(p.wait(), 0)

    def test_lines_stream_before_exit(self):
        # The first line must arrive while the process still waits for stdin: streaming, not
        # buffering until exit.
        p = self.sb.exec("sh", "-c", "echo ready; read x; echo got $x")
        self.assertEqual(p.stdout.readline(), "ready\n")
        self.assertIsNone(p.poll())
        p.stdin.write("go\n")
        p.stdin.write_eof()
        self.assertEqual(p.stdout.readline(), "got go\n")
        self.assertEqual(p.wait(), 0)

    def test_exec_timeout(self):
        p = self.sb.exec("sleep", "30", timeout=1)
        self.assertEqual(p.wait(), 124)
        self.assertTrue(p.timed_out)

    def test_files(self):
        with self.sb.open("/tmp/py/a.txt", "w") as f:
            f.write("hello\n")
        with self.sb.open("/tmp/py/a.txt", "a") as f:
            f.write("world\n")
        with self.sb.open("/tmp/py/a.txt") as f:
            self.assertEqual(f.read(), "hello\nworld\n")
        with self.sb.open("/tmp/py/b.bin", "wb") as f:
            f.write(bytes(range(256)))
        with self.sb.open("/tmp/py/b.bin", "rb") as f:
            self.assertEqual(f.read(), bytes(range(256)))
        self.sb.mkdir("/tmp/py/sub/deeper")
        self.assertEqual(sorted(self.sb.ls("/tmp/py")), ["a.txt", "b.bin", "sub"])
        self.sb.rm("/tmp/py/a.txt")
        self.sb.rm("/tmp/py/sub", recursive=True)
        self.assertEqual(self.sb.ls("/tmp/py"), ["b.bin"])
        with self.assertRaises(FileNotFoundError):
            self.sb.open("/tmp/py/missing.txt")
        with self.assertRaises(airlock.InvalidArgumentError):
            self.sb.read_file("/proc/self/environ")

    def test_from_id_and_list(self):
        again = airlock.Sandbox.from_id(self.sb.object_id)
        self.assertEqual(again.info()["status"], "running")
        self.assertIn(self.sb.object_id, [s.object_id for s in airlock.Sandbox.list()])

    def test_errors_are_typed(self):
        with self.assertRaises(airlock.NotFoundError) as cm:
            airlock.Sandbox.from_id("sb-does-not-exist")
        self.assertEqual(cm.exception.status, 404)
        with self.assertRaises(airlock.InvalidArgumentError):
            airlock.Sandbox.create(memory=-5)


@unittest.skipUnless(SERVER, "needs AIRLOCK_SERVER")
class AsyncTest(unittest.TestCase):
    def test_concurrent_execs(self):
        import asyncio

        async def main():
            sb = await airlock.Sandbox.create.aio(timeout=60)
            try:
                procs = await asyncio.gather(*(sb.exec.aio("sh", "-c", "sleep 0.5; echo %d" % i) for i in range(3)))
                codes = await asyncio.gather(*(p.wait.aio() for p in procs))
                outs = await asyncio.gather(*(p.stdout.read.aio() for p in procs))
                return codes, outs
            finally:
                await sb.terminate.aio()

        codes, outs = asyncio.run(main())
        self.assertEqual((codes, outs), ([0, 0, 0], ["0\n", "1\n", "2\n"]))


@unittest.skipUnless(SERVER, "needs AIRLOCK_SERVER")
class LifecycleTest(unittest.TestCase):
    def test_terminate(self):
        sb = airlock.Sandbox.create(timeout=60)
        self.assertIsNone(sb.poll())
        sb.terminate()
        self.assertEqual(sb.poll(), 0)
        with self.assertRaises(airlock.SandboxTerminatedError):
            sb.exec("true")

    def test_snapshot_of_a_host_sandbox_is_refused(self):
        sb = airlock.Sandbox.create(timeout=60)
        try:
            with self.assertRaises(airlock.InvalidArgumentError) as cm:
                sb.snapshot_filesystem("pyclient:snap")
            self.assertIn("host image", str(cm.exception))
        finally:
            sb.terminate()

    def test_wrong_key(self):
        if not os.environ.get("AIRLOCK_API_KEY"):
            self.skipTest("the daemon has no keys")
        c = airlock.Client(SERVER, "wrong-key-0000000000")
        with self.assertRaises(airlock.AuthenticationError):
            airlock.Sandbox.create(client=c)


@unittest.skipUnless(SERVER, "needs AIRLOCK_SERVER")
class SessionTest(unittest.TestCase):
    def test_state_display_and_errors(self):
        with airlock.Session.create(timeout=120) as s:
            r = s.run("x = 41\nx + 1")
            self.assertTrue(r.success, r)
            self.assertEqual(r.result, "42")
            r = s.run("print(x)")
            self.assertEqual(r.stdout, "41\n")
            r = s.run("1/0")
            self.assertFalse(r.success)
            self.assertEqual(r.error.name, "ZeroDivisionError")
            r = s.run("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                      "plt.plot([1, 2, 3])\nplt.show()", timeout=60)
            self.assertTrue(r.success, r)
            pngs = [d for d in r.display if d.mime == "image/png"]
            self.assertEqual(len(pngs), 1, r.display)
            self.assertEqual(pngs[0].bytes()[:8], b"\x89PNG\r\n\x1a\n")
            # The session's files are its sandbox's.
            s.run("open('/workspace/out.txt', 'w').write('from the cell')")
            with s.sandbox.open("/workspace/out.txt") as f:
                self.assertEqual(f.read(), "from the cell")
            again = airlock.Session.from_id(s.id)
            self.assertEqual(again.run("x").result, "41")

    def test_interrupt_keeps_state(self):
        import threading
        with airlock.Session.create(timeout=120) as s:
            s.run("y = 7")
            out = {}
            t = threading.Thread(target=lambda: out.setdefault("r", s.run("import time\ntime.sleep(60)", timeout=90)))
            t.start()
            # Interrupt until the cell is stopped: the first may land before the cell starts.
            while t.is_alive():
                s.interrupt()
                t.join(0.2)
            self.assertTrue(out["r"].interrupted, out["r"])
            self.assertEqual(s.run("y").result, "7")


@unittest.skipUnless(SERVER, "needs AIRLOCK_SERVER")
class ExecuteTest(unittest.TestCase):
    def test_execute(self):
        r = airlock.execute("import sys; print(sum(range(100))); sys.exit(2)", timeout=30)
        self.assertEqual((r.stdout, r.returncode, r.success), ("4950\n", 2, False))

    def test_execute_streamed(self):
        chunks = []
        r = airlock.execute("import sys\nprint('a', flush=True)\nprint('b', file=sys.stderr)",
                            on_output=lambda s, d: chunks.append((s, d)))
        self.assertTrue(r.success)
        self.assertEqual(sorted(chunks), [("stderr", "b\n"), ("stdout", "a\n")])

    def test_execute_batch(self):
        rs = airlock.execute_batch(["print(1)", {"code": "echo two; exit 4", "language": "bash"}])
        self.assertEqual([(r.stdout, r.returncode) for r in rs], [("1\n", 0), ("two\n", 4)])
        with self.assertRaises(airlock.InvalidArgumentError):
            airlock.execute_batch([{"code": "print(3)", "language": "cobol"}])


if __name__ == "__main__":
    unittest.main()
