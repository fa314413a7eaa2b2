"""Unit tests against a fake daemon (http.server on 127.0.0.1): the wire format the client
sends and how it reads answers, errors and streams."""

import json
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import airlock


class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, obj=None, ctype="application/json", raw=None):
        b = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else b"")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def _route(self, method):
        srv = self.server
        u = urlparse(self.path)
        q = parse_qs(u.query)
        body = self._body()
        srv.calls.append((method, u.path, q, body, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != "Bearer k1":
            return self._send(401, {"error": {"code": "unauthenticated", "message": "missing or invalid API key"}})
        if (method, u.path) == ("POST", "/v1/sandboxes"):
            req = json.loads(body)
            if req.get("memory_mb", 1) < 0:
                return self._send(400, {"error": {"code": "invalid_argument", "message": "memory_mb is negative"}})
            return self._send(201, {"id": "sb-1", "status": "running"})
        if (method, u.path) == ("GET", "/v1/sandboxes/sb-gone"):
            return self._send(410, {"error": {"code": "gone", "message": "sandbox sb-gone ended"}})
        if (method, u.path) == ("GET", "/v1/sandboxes/sb-teapot"):
            return self._send(418, raw=b"short and stout", ctype="text/plain")
        if (method, u.path) == ("POST", "/v1/sandboxes/sb-1/exec"):
            assert self.headers.get("Accept") == "application/x-ndjson"
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()  # no length: read to the connection's close
            self.close_connection = True
            for ev in ({"type": "start", "pid": 7}, {"type": "stdout", "data": "one\ntw"}):
                self.wfile.write(json.dumps(ev).encode() + b"\n")
                self.wfile.flush()
            srv.release.wait(10)  # the client must see the first line before this
            for ev in ({"type": "stdout", "data": "o\n"}, {"type": "stderr", "data": "e"},
                       {"type": "exit", "exit_code": 5, "execution_time": 0.1}):
                self.wfile.write(json.dumps(ev).encode() + b"\n")
            return
        if (method, u.path) == ("POST", "/v1/sandboxes/sb-1/processes/7/stdin"):
            return self._send(204)
        if u.path == "/v1/sandboxes/sb-1/files":
            path = q["path"][0]
            if method == "GET":
                if path not in srv.files:
                    return self._send(404, {"error": {"code": "not_found", "message": "no such file"}})
                return self._send(200, raw=srv.files[path], ctype="application/octet-stream")
            if method == "PUT":
                srv.files[path] = body
                return self._send(200, {"name": path, "path": path, "type": "file", "size": len(body)})
        if (method, u.path) == ("POST", "/v1/sandboxes/sb-1/snapshot"):
            return self._send(201, {"id": "sha256:" + "ab" * 32, "names": [json.loads(body or b"{}").get("name", "")]})
        if (method, u.path) == ("POST", "/v1/execute"):
            return self._send(200, {"success": False, "stdout": "", "stderr": "", "exit_code": 3, "returncode": 3})
        return self._send(404, {"error": {"code": "not_found", "message": "no route"}})

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def do_DELETE(self):
        self._route("DELETE")


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
        self.srv.calls, self.srv.files, self.srv.release = [], {}, threading.Event()
        self.thread = threading.Thread(target=self.srv.serve_forever)
        self.thread.start()
        self.url = "http://127.0.0.1:%d" % self.srv.server_address[1]
        self.c = airlock.Client(self.url, "k1", timeout=10)

    def tearDown(self):
        self.srv.release.set()
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join()

    def test_create_sends_modal_arguments_as_api_fields(self):
        sb = airlock.Sandbox.create(image=airlock.Image.debian_slim().pip_install("numpy"), timeout=30, memory=512,
                                    cpu=1.5, block_network=False, workdir="/w", env={"A": "b"}, app=object(),
                                    client=self.c)
        self.assertEqual(sb.object_id, "sb-1")
        method, path, _, body, auth = self.srv.calls[0]
        self.assertEqual((method, path, auth), ("POST", "/v1/sandboxes", "Bearer k1"))
        self.assertEqual(json.loads(body), {"image": "host", "timeout": 30, "memory_mb": 512, "cpu": 1.5,
                                            "block_network": False, "workdir": "/w", "env": {"A": "b"}})

    def test_snapshot_filesystem_returns_an_image_by_id(self):
        sb = airlock.Sandbox.create(client=self.c)
        img = sb.snapshot_filesystem("ds:warm")
        self.assertEqual(img.name, "sha256:" + "ab" * 32)
        method, path, _, body, _ = self.srv.calls[-1]
        self.assertEqual((method, path, json.loads(body)), ("POST", "/v1/sandboxes/sb-1/snapshot", {"name": "ds:warm"}))
        sb.snapshot_filesystem()
        self.assertEqual(json.loads(self.srv.calls[-1][3]), {})

    def test_errors_map_to_types(self):
        cases = [
            (lambda: airlock.Sandbox.create(memory=-1, client=self.c), airlock.InvalidArgumentError, 400),
            (lambda: airlock.Sandbox.from_id("sb-gone", client=self.c), airlock.SandboxTerminatedError, 410),
            (lambda: airlock.Sandbox.from_id("sb-nope", client=self.c), airlock.NotFoundError, 404),
            (lambda: airlock.Sandbox.create(client=airlock.Client(self.url, "bad")), airlock.AuthenticationError, 401),
            (lambda: airlock.Sandbox.from_id("sb-teapot", client=self.c), airlock.InternalError, 418),
        ]
        for fn, cls, status in cases:
            with self.subTest(cls=cls.__name__):
                with self.assertRaises(cls) as cm:
                    fn()
                self.assertEqual(cm.exception.status, status)
                self.assertIsInstance(cm.exception, airlock.AirlockError)

    def test_timeout_error_is_builtin(self):
        self.assertTrue(issubclass(airlock.TimeoutError, TimeoutError))

    def test_unreachable_daemon(self):
        c = airlock.Client("http://127.0.0.1:1", "k1", timeout=5)
        with self.assertRaises(airlock.ConnectionError):
            airlock.Sandbox.create(client=c)

    def test_exec_streams_lines_and_stdin(self):
        sb = airlock.Sandbox({"id": "sb-1"}, self.c)
        p = sb.exec("prog", "arg", timeout=3)
        self.assertEqual(p.pid, 7)
        self.assertEqual(p.stdout.readline(), "one\n")  # before the process ended
        self.assertIsNone(p.poll())
        p.stdin.write("in")
        p.stdin.write_eof()
        self.srv.release.set()
        self.assertEqual(p.wait(), 5)
        self.assertEqual(list(p.stdout), ["two\n"])
        self.assertEqual(p.stderr.read(), "e")
        req = json.loads(self.srv.calls[0][3])
        self.assertEqual(req, {"cmd": ["prog", "arg"], "stdin_open": True, "timeout": 3})
        stdin = [c for c in self.srv.calls if c[1].endswith("/stdin")]
        self.assertEqual([(c[2], c[3]) for c in stdin], [({"eof": ["true"]}, b"in")])

    def test_files(self):
        sb = airlock.Sandbox({"id": "sb-1"}, self.c)
        with sb.open("/tmp/a", "w") as f:
            f.write("x")
            f.write("y")
        self.assertEqual(self.srv.files["/tmp/a"], b"xy")
        with sb.open("/tmp/a", "a") as f:
            f.write("z")
        with sb.open("/tmp/a", "rb") as f:
            self.assertEqual(f.read(), b"xyz")
        with self.assertRaises(FileNotFoundError):
            sb.open("/tmp/none")
        with self.assertRaises(TypeError):
            with sb.open("/tmp/b", "wb") as f:
                f.write("str in binary mode")
        with self.assertRaises(ValueError):
            sb.open("/tmp/a", "q")

    def test_execute_reads_exit_code(self):
        r = airlock.execute("x", timeout=1, memory=64, client=self.c)
        self.assertEqual((r.returncode, r.success), (3, False))
        self.assertEqual(json.loads(self.srv.calls[0][3]), {"code": "x", "timeout": 1, "memory_mb": 64})
        with self.assertRaises(TypeError):
            airlock.execute_batch([{"code": "x", "bogus": 1}], client=self.c)

    def test_aio(self):
        import asyncio

        async def main():
            sb = await airlock.Sandbox.create.aio(timeout=5, client=self.c)
            r = await airlock.execute.aio("x", client=self.c)
            return sb, r

        sb, r = asyncio.run(main())
        self.assertEqual((sb.object_id, r.returncode), ("sb-1", 3))
        # The blocking forms are unchanged, bound as methods.
        self.assertEqual(airlock.Sandbox.create(client=self.c).object_id, "sb-1")
        self.assertEqual(airlock.Sandbox.exec.__name__, "exec")

    def test_from_env(self):
        import os
        from unittest import mock
        with mock.patch.dict(os.environ, {"AIRLOCK_SERVER": "http://h:1/", "AIRLOCK_API_KEY": "kk"}):
            c = airlock.Client.from_env()
        self.assertEqual((c.server, c.api_key), ("http://h:1", "kk"))


if __name__ == "__main__":
    unittest.main()
