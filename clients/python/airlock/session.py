"""Stateful Python sessions (the REPL) and one-shot execution."""

import base64
import json
from dataclasses import dataclass, field, fields
from typing import Any, List, Optional

from . import errors
from .aio import blocking
from .client import default_client
from .sandbox import Sandbox, _image_name, _seg


def _build(cls, d):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass
class Display:
    """A rich output of a cell: image/* data is base64, text types are the text."""

    mime: str
    data: str

    def bytes(self):
        """The decoded bytes of a binary (base64) output, e.g. a PNG."""
        if self.mime.startswith("text/") or self.mime.endswith("json"):
            return self.data.encode()
        return base64.b64decode(self.data)


@dataclass
class CellError:
    name: str
    value: str
    traceback: List[str] = field(default_factory=list)


@dataclass
class RunResult:
    """What one cell did: stdout, stderr, result (repr of the trailing expression), display
    (plots and other rich outputs), error (the exception it raised)."""

    success: bool = False
    stdout: str = ""
    stderr: str = ""
    result: Optional[str] = None
    display: List[Display] = field(default_factory=list)
    error: Optional[CellError] = None
    execution_time: float = 0.0
    truncated: bool = False
    timed_out: bool = False
    interrupted: bool = False
    restarted: bool = False
    restart_reason: str = ""

    @classmethod
    def from_json(cls, d):
        r = _build(cls, d)
        r.display = [_build(Display, x) for x in (d.get("display") or [])]
        r.error = _build(CellError, d["error"]) if d.get("error") else None
        return r


@dataclass
class InstallResult:
    success: bool = False
    output: str = ""
    exit_code: int = 0
    timed_out: bool = False


class Session:
    """A long-lived Python interpreter in its own sandbox: variables, imports and files persist
    from one run() to the next. Session.create(...) makes one; Session.from_id(id) reattaches.
    Its files are those of session.sandbox."""

    def __init__(self, info, client=None):
        self._client = client or default_client()
        self.info = info
        self.id = info["id"]

    def __repr__(self):
        return "Session(%r)" % self.id

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.terminate()

    @blocking
    @classmethod
    def create(cls, timeout=None, idle_timeout=None, memory=None, cpu=None, image=None, env=None,
               network=None, tags=None, client=None):
        c = client or default_client()
        req = {"timeout": timeout, "idle_timeout": idle_timeout, "memory_mb": memory, "cpu": cpu,
               "image": _image_name(image), "env": env, "network": network, "tags": tags}
        return cls(c.json("POST", "/v1/sessions", json_body={k: v for k, v in req.items() if v is not None}), c)

    @blocking
    @classmethod
    def from_id(cls, session_id, client=None):
        c = client or default_client()
        return cls(c.json("GET", "/v1/sessions/" + _seg(session_id)), c)

    @property
    def sandbox(self):
        """The session's sandbox, for its files (open, ls, …) and exec."""
        return Sandbox(self.info, self._client)

    def _path(self, suffix):
        return "/v1/sessions/" + _seg(self.id) + suffix

    @blocking
    def run(self, code, timeout=None):
        """Runs a cell; at timeout (seconds, default the daemon's 30) it is interrupted."""
        req = {"code": code}
        if timeout is not None:
            req["timeout"] = timeout
        return RunResult.from_json(self._client.json("POST", self._path("/run"), json_body=req))

    @blocking
    def install(self, *packages, timeout=None):
        """pip-installs packages into the session (its network policy applies)."""
        req = {"packages": list(packages)}
        if timeout is not None:
            req["timeout"] = timeout
        return _build(InstallResult, self._client.json("POST", self._path("/install"), json_body=req))

    @blocking
    def interrupt(self):
        """Stops the running cell, keeping state; {"interrupted", "restarted"}."""
        return self._client.json("POST", self._path("/interrupt"))

    @blocking
    def terminate(self):
        try:
            self.info = self._client.json("DELETE", self._path(""))
        except (errors.SandboxTerminatedError, errors.NotFoundError):
            pass

    close = terminate


@dataclass
class OutputFile:
    name: str
    size: int
    mime: str
    data: bytes


@dataclass
class ExecuteResult:
    """A one-shot run's answer; returncode is the exit status (the API's exit_code)."""

    success: bool = False
    stdout: str = ""
    stderr: str = ""
    returncode: int = 0
    execution_time: float = 0.0
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    cpu_time: float = 0.0
    peak_memory_mb: float = 0.0
    files: List[OutputFile] = field(default_factory=list)
    files_truncated: bool = False
    error: Optional[errors.AirlockError] = None  # execute_batch: the snippet could not run

    @classmethod
    def from_json(cls, d):
        r = _build(cls, {k: v for k, v in d.items() if k not in ("files", "error")})
        if "exit_code" in d:
            r.returncode = d["exit_code"]
        r.files = [OutputFile(f["name"], f.get("size", 0), f.get("mime", ""), base64.b64decode(f.get("data") or ""))
                   for f in (d.get("files") or [])]
        return r

    def to_dict(self):
        """The seed's answer shape: success, stdout, stderr, returncode."""
        return {"success": self.success, "stdout": self.stdout, "stderr": self.stderr, "returncode": self.returncode}


_EXEC_KEYS = ("language", "stdin", "timeout", "memory_mb", "cpu", "allow_network", "network", "env", "files",
              "image", "output_files")


def _execute_request(code, **kw):
    if "memory" in kw:
        kw["memory_mb"] = kw.pop("memory")
    bad = set(kw) - set(_EXEC_KEYS)
    if bad:
        raise TypeError("unexpected argument(s): %s" % ", ".join(sorted(bad)))
    req = {"code": code}
    for k, v in kw.items():
        if v is not None:
            req[k] = _image_name(v) if k == "image" else v
    return req


@blocking
def execute(code, language=None, timeout=None, memory=None, cpu=None, allow_network=None, network=None,
            env=None, files=None, stdin=None, image=None, output_files=None, on_output=None, client=None):
    """Runs code once in a fresh sandbox and returns its ExecuteResult. With on_output, output
    is streamed: on_output(stream, text) is called with "stdout" or "stderr" and each chunk as
    the program writes it."""
    c = client or default_client()
    req = _execute_request(code, language=language, timeout=timeout, memory=memory, cpu=cpu,
                           allow_network=allow_network, network=network, env=env, files=files, stdin=stdin,
                           image=image, output_files=output_files)
    if on_output is None:
        return ExecuteResult.from_json(c.json("POST", "/v1/execute", json_body=req))
    with c.open("POST", "/v1/execute", json_body=req, headers={"Accept": "application/x-ndjson"},
                stream=True) as resp:
        for line in resp:
            if not line.strip():
                continue
            ev = json.loads(line)
            t = ev.get("type")
            if t in ("stdout", "stderr"):
                on_output(t, ev.get("data", ""))
            elif t == "result":
                return ExecuteResult.from_json(ev["result"])
            elif t == "error":
                e = ev.get("error") or {}
                raise errors.from_code(e.get("code", "internal"), e.get("message", "execution failed"))
    raise errors.AirlockError("execute: stream ended without a result")


@blocking
def execute_batch(snippets, concurrency=None, client=None):
    """Runs each snippet (a code string, or a dict of execute's arguments with "code") in its own
    fresh sandbox, in parallel on the daemon; returns one ExecuteResult per snippet, in order. A
    snippet that could not run has error set (an AirlockError) and success False."""
    c = client or default_client()
    reqs = []
    for s in snippets:
        if isinstance(s, str):
            s = {"code": s}
        s = dict(s)
        reqs.append(_execute_request(s.pop("code"), **s))
    body = {"snippets": reqs}
    if concurrency:
        body["concurrency"] = concurrency
    out = []
    for r in c.json("POST", "/v1/execute/batch", json_body=body)["results"]:
        if r.get("error") and len(r) == 1:
            e = r["error"]
            out.append(ExecuteResult(returncode=-1, error=errors.from_code(e.get("code"), e.get("message"))))
        else:
            out.append(ExecuteResult.from_json(r))
    return out
