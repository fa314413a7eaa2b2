"""Long-lived sandboxes, their processes and files, shaped after Modal's Sandbox API."""

import io
import json
import threading
import urllib.parse

from . import errors
from .aio import blocking
from .client import default_client


class Image:
    """A root file system by name: "host" (the daemon's host image) or an image of the daemon's
    store by name[:tag] or id.

    debian_slim() and pip_install() exist so Modal code ports unchanged: they name the host
    image, which carries Python 3 and the seed's packages (numpy, pandas, matplotlib, …). The
    packages pip_install lists are recorded, not installed: the daemon builds images with
    `airlock image build`, not from the client."""

    def __init__(self, name="host", packages=()):
        self.name = name
        self.packages = tuple(packages)

    @classmethod
    def from_name(cls, name):
        return cls(name)

    @classmethod
    def debian_slim(cls, python_version=None):
        return cls("host")

    def pip_install(self, *packages):
        return Image(self.name, self.packages + tuple(packages))

    def __repr__(self):
        return "Image(%r)" % self.name


def _image_name(image):
    if image is None:
        return None
    if isinstance(image, Image):
        return image.name
    return str(image)


class Sandbox:
    """A running sandbox. Make one with Sandbox.create(...) or Sandbox.from_id(id)."""

    def __init__(self, info, client=None):
        self._client = client or default_client()
        self._info = info
        self.object_id = info["id"]

    @property
    def id(self):
        return self.object_id

    def __repr__(self):
        return "Sandbox(%r)" % self.object_id

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.terminate()

    @blocking
    @classmethod
    def create(cls, *entrypoint, image=None, timeout=None, idle_timeout=None, memory=None, cpu=None,
               block_network=None, network=None, workdir=None, env=None, tags=None, ports=None,
               app=None, client=None):
        """Creates a sandbox. timeout and idle_timeout are seconds, memory MiB, cpu cores;
        block_network=False gives it the public internet (network, an api Network dict, says
        more). app is accepted for Modal's signature and ignored. An entrypoint, if given, is
        started with exec and left running."""
        c = client or default_client()
        req = {
            "image": _image_name(image),
            "timeout": timeout,
            "idle_timeout": idle_timeout,
            "memory_mb": memory,
            "cpu": cpu,
            "block_network": block_network,
            "network": network,
            "workdir": workdir,
            "env": env,
            "tags": tags,
            "ports": list(ports) if ports else None,
        }
        sb = cls(c.json("POST", "/v1/sandboxes", json_body={k: v for k, v in req.items() if v is not None}), c)
        if entrypoint:
            sb.exec(*entrypoint)
        return sb

    @blocking
    @classmethod
    def from_id(cls, sandbox_id, client=None):
        c = client or default_client()
        return cls(c.json("GET", "/v1/sandboxes/" + _seg(sandbox_id)), c)

    @blocking
    @classmethod
    def list(cls, tags=None, client=None):
        """The caller's live sandboxes (and sessions) having every tag in tags."""
        c = client or default_client()
        q = {"tag": ["%s:%s" % kv for kv in (tags or {}).items()]}
        return [cls(i, c) for i in c.json("GET", "/v1/sandboxes", q)["sandboxes"]]

    def _path(self, suffix=""):
        return "/v1/sandboxes/" + _seg(self.object_id) + suffix

    @blocking
    def info(self):
        """The sandbox's SandboxInfo (status, usage, expires_at, …), fetched now."""
        self._info = self._client.json("GET", self._path())
        return self._info

    @property
    def usage(self):
        return self.info().get("usage")

    @blocking
    def poll(self):
        """None while the sandbox runs, else 0."""
        try:
            st = self.info()["status"]
        except (errors.SandboxTerminatedError, errors.NotFoundError):
            return 0
        return None if st == "running" else 0

    @blocking
    def terminate(self):
        try:
            self._info = self._client.json("DELETE", self._path())
        except (errors.SandboxTerminatedError, errors.NotFoundError):
            pass

    @blocking
    def snapshot_filesystem(self, name=None):
        """Commits the sandbox's writable layer on top of its image as a new image (Modal's
        snapshot_filesystem) and returns it as an Image that Sandbox.create and Session take;
        name ("name[:tag]") names it in the daemon's store. The sandbox keeps running. A sandbox
        of the host image cannot be snapshotted (InvalidArgumentError)."""
        body = {"name": name} if name else {}
        img = self._client.json("POST", self._path("/snapshot"), json_body=body)
        return Image(img["id"])

    @blocking
    def set_timeout(self, timeout):
        """Ends the sandbox timeout seconds from now."""
        self._info = self._client.json("POST", self._path("/timeout"), json_body={"timeout": timeout})

    @blocking
    def exec(self, *cmd, timeout=None, workdir=None, env=None, text=True, tag=None):
        """Starts cmd (program and arguments, no shell) and returns its ContainerProcess once it
        runs. timeout (seconds) kills its process tree (returncode 124)."""
        if len(cmd) == 1 and isinstance(cmd[0], (list, tuple)):
            cmd = tuple(cmd[0])
        req = {"cmd": [str(a) for a in cmd], "stdin_open": True}
        for k, v in (("timeout", timeout), ("workdir", workdir), ("env", env), ("tag", tag)):
            if v is not None:
                req[k] = v
        resp = self._client.open("POST", self._path("/exec"), json_body=req,
                                 headers={"Accept": "application/x-ndjson"}, stream=True)
        return ContainerProcess(self, resp, text)

    @blocking
    def processes(self):
        return self._client.json("GET", self._path("/processes"))["processes"]

    # Files.

    def open(self, path, mode="r"):
        """A file object for path inside the sandbox: modes r, w, a, x, r+, w+, a+, with b for
        bytes. Reading fetches the file whole; writes are sent on flush() and close()."""
        return SandboxFile(self, path, mode)

    @blocking
    def read_file(self, path):
        """The file's bytes."""
        return self._client.raw("GET", self._path("/files"), {"path": path})

    @blocking
    def write_file(self, path, data, mode=None):
        """Writes data (bytes or str) to path, creating parents; mode is permission bits."""
        if isinstance(data, str):
            data = data.encode()
        q = {"path": path, "mode": "%o" % mode if mode is not None else None}
        return self._client.json("PUT", self._path("/files"), q, body=data)

    @blocking
    def ls(self, path="."):
        """The names in directory path."""
        return [e["name"] for e in self.listdir(path)]

    @blocking
    def listdir(self, path=".", depth=None):
        """The FileInfo dicts (name, path, type, size, mode, modified_at) of path's entries."""
        return self._client.json("GET", self._path("/files/list"), {"path": path, "depth": depth})["entries"]

    @blocking
    def stat(self, path):
        return self._client.json("GET", self._path("/files/stat"), {"path": path})

    @blocking
    def mkdir(self, path, parents=True):
        """Makes directory path, and its parents (the API's mkdir is mkdir -p)."""
        return self._client.json("POST", self._path("/files/mkdir"), {"path": path})

    @blocking
    def rm(self, path, recursive=False):
        self._client.raw("DELETE", self._path("/files"), {"path": path, "recursive": "true" if recursive else None})


def _seg(s):
    return urllib.parse.quote(str(s), safe="")


class StreamReader:
    """One output stream of a process. read() waits for the end and returns everything not yet
    read; iterating yields lines as they arrive."""

    def __init__(self, text):
        self._text = text
        self._buf = []
        self._pos = 0
        self._done = False
        self._err = None
        self._cv = threading.Condition()

    def _feed(self, data):
        with self._cv:
            self._buf.append(data)
            self._cv.notify_all()

    def _close(self, err=None):
        with self._cv:
            self._done, self._err = True, err
            self._cv.notify_all()

    def _joined(self):
        # One string of what is buffered; the part already read is dropped once it is the
        # larger half, so that reading line by line stays linear in the output's size.
        s = "".join(self._buf)
        if self._pos > len(s) // 2:
            s, self._pos = s[self._pos:], 0
        self._buf = [s]
        return s

    @blocking
    def read(self):
        with self._cv:
            self._cv.wait_for(lambda: self._done)
            s = self._joined()
            out, self._pos = s[self._pos:], len(s)
        if self._err is not None and not out:
            raise self._err
        return out if self._text else out.encode()

    @blocking
    def readline(self):
        with self._cv:
            while True:
                s = self._joined()
                i = s.find("\n", self._pos)
                if i >= 0 or self._done:
                    end = i + 1 if i >= 0 else len(s)
                    out, self._pos = s[self._pos:end], end
                    break
                self._cv.wait()
        return out if self._text else out.encode()

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class StreamWriter:
    """A process's stdin, as Modal's: write() buffers, drain() sends what was written,
    write_eof() sends it and closes stdin."""

    def __init__(self, proc):
        self._proc = proc
        self._pending = bytearray()
        self._closed = False

    def write(self, data):
        if self._closed:
            raise ValueError("stdin is closed")
        self._pending += data.encode() if isinstance(data, str) else data

    @blocking
    def drain(self, eof=False):
        data, self._pending = bytes(self._pending), bytearray()
        if not data and not eof:
            return
        p = self._proc
        try:
            p._sandbox._client.raw("POST", p._sandbox._path("/processes/%d/stdin" % p.pid),
                                   {"eof": "true" if eof else None}, body=data)
        except errors.NotFoundError as e:
            # The process has ended (perhaps on the very data just sent). Closing the stdin
            # of a finished process is done already; writing to it is a broken pipe.
            if not eof:
                raise BrokenPipeError("stdin of process %d: %s" % (p.pid, e.message)) from e

    @blocking
    def write_eof(self):
        if self._closed:
            return
        self._closed = True
        self.drain(eof=True)

    def close(self):
        self.write_eof()


class ContainerProcess:
    """A command running in a sandbox. Its output streams in over one response that a thread
    of this object reads until the command ends, so wait() returns even if stdout is never
    read."""

    def __init__(self, sandbox, resp, text=True):
        self._sandbox = sandbox
        self._resp = resp
        self.stdout = StreamReader(text)
        self.stderr = StreamReader(text)
        self.stdin = StreamWriter(self)
        self.pid = 0
        self.returncode = None
        self.timed_out = False
        self.execution_time = None
        self._err = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._read, name="airlock-exec", daemon=True)
        self._thread.start()
        self._started.wait()
        if self.pid == 0 and self._err is not None:
            self._thread.join()
            raise self._err

    def _read(self):
        err = None
        try:
            with self._resp:
                if self._resp.headers.get_content_type() == "application/json":
                    self._plain(json.loads(self._resp.read()))
                    return
                for line in self._resp:
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    t = ev.get("type")
                    if t == "start":
                        self.pid = ev.get("pid", 0)
                        self._started.set()
                    elif t == "stdout":
                        self.stdout._feed(ev.get("data", ""))
                    elif t == "stderr":
                        self.stderr._feed(ev.get("data", ""))
                    elif t == "exit":
                        self.timed_out = bool(ev.get("timed_out"))
                        self.execution_time = ev.get("execution_time")
                        code = ev.get("exit_code")
                        self.returncode = -1 if code is None else code
                        return
                    elif t == "error":
                        e = ev.get("error") or {}
                        err = errors.from_code(e.get("code", "internal"), e.get("message", "exec failed"))
                        return
                err = errors.AirlockError("exec: stream ended before the process exited")
        except (OSError, ValueError) as e:
            err = errors.ConnectionError("exec: read stream: %s" % e)
        finally:
            self._err = err
            self.stdout._close(err)
            self.stderr._close(err)
            self._started.set()

    def _plain(self, r):
        # A daemon that ignored Accept answered with one ExecResult.
        self.pid = r.get("pid", 0)
        self._started.set()
        self.stdout._feed(r.get("stdout", ""))
        self.stderr._feed(r.get("stderr", ""))
        self.timed_out = bool(r.get("timed_out"))
        self.returncode = r.get("exit_code", -1)

    def poll(self):
        """The exit status, or None while the command runs."""
        return None if self._thread.is_alive() else self._result()

    @blocking
    def wait(self):
        """Waits for the command to end and returns its exit status (124 on its timeout)."""
        self._thread.join()
        return self._result()

    def _result(self):
        if self._err is not None:
            raise self._err
        return self.returncode

    @blocking
    def signal(self, signum):
        self._sandbox._client.raw("POST", self._sandbox._path("/processes/%d/signal" % self.pid),
                                  json_body={"signal": int(signum)})

    def kill(self):
        self.signal(9)


class SandboxFile(io.IOBase):
    """A file in a sandbox (see Sandbox.open). The content is fetched whole when opened for
    reading or appending; what was written is sent whole on flush() and close()."""

    def __init__(self, sandbox, path, mode="r"):
        super().__init__()
        self._dirty = False  # before anything can raise: IOBase.__del__ calls close
        base = mode.replace("b", "").replace("t", "")
        if base not in ("r", "w", "a", "x", "r+", "w+", "a+", "x+"):
            raise ValueError("invalid mode %r" % mode)
        self._sandbox, self.name, self.mode = sandbox, path, mode
        self._binary = "b" in mode
        self._readable = base[0] == "r" or "+" in base
        self._writable = base[0] != "r" or "+" in base
        data = b""
        if base[0] in "ra":
            try:
                data = sandbox.read_file(path)
            except errors.NotFoundError:
                if base[0] == "r":
                    raise FileNotFoundError(path) from None
        elif base[0] == "x":
            try:
                sandbox.stat(path)
            except errors.NotFoundError:
                pass
            else:
                raise FileExistsError(path)
        if base[0] in "wx":
            self._dirty = True  # an empty write still creates (or truncates) the file
        self._buf = io.BytesIO(data)
        if base[0] == "a":
            self._buf.seek(0, io.SEEK_END)
        self._append = base[0] == "a"

    def readable(self):
        return self._readable

    def writable(self):
        return self._writable

    def seekable(self):
        return True

    def _out(self, b):
        return b if self._binary else b.decode()

    def read(self, size=-1):
        self._check(self._readable, "not readable")
        return self._out(self._buf.read(size))

    def readline(self, size=-1):
        self._check(self._readable, "not readable")
        return self._out(self._buf.readline(size))

    def __iter__(self):
        return iter(self.readline, self._out(b""))

    def write(self, data):
        self._check(self._writable, "not writable")
        if self._binary and isinstance(data, str):
            raise TypeError("write() argument must be bytes in binary mode")
        if not self._binary and not isinstance(data, str):
            raise TypeError("write() argument must be str in text mode")
        if self._append:
            self._buf.seek(0, io.SEEK_END)
        self._dirty = True
        return self._buf.write(data if self._binary else data.encode())

    def seek(self, offset, whence=io.SEEK_SET):
        return self._buf.seek(offset, whence)

    def tell(self):
        return self._buf.tell()

    def flush(self):
        if not self.closed and self._dirty:
            self._sandbox.write_file(self.name, self._buf.getvalue())
            self._dirty = False

    def close(self):
        if self.closed:
            return
        try:
            self.flush()
        finally:
            super().close()

    def _check(self, ok, what):
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not ok:
            raise io.UnsupportedOperation(what)
