"""The HTTP transport: one Client per daemon and API key, over urllib (standard library only)."""

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from . import errors

DEFAULT_SERVER = "http://127.0.0.1:8080"


class Client:
    """A daemon's address and API key. Client.from_env() reads AIRLOCK_SERVER (default
    http://127.0.0.1:8080) and AIRLOCK_API_KEY, as the CLI does.

    timeout is the socket timeout in seconds of plain requests; streamed execs have none, since
    a command may be silent for as long as it likes."""

    def __init__(self, server=None, api_key=None, timeout=300.0):
        self.server = (server or DEFAULT_SERVER).rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout

    @classmethod
    def from_env(cls):
        return cls(os.environ.get("AIRLOCK_SERVER") or None, os.environ.get("AIRLOCK_API_KEY") or None)

    def __repr__(self):
        return "Client(%r)" % self.server

    def url(self, path, query=None):
        u = self.server + path
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                u += "?" + urllib.parse.urlencode(q, doseq=True)
        return u

    def open(self, method, path, query=None, body=None, json_body=None, headers=None, stream=False):
        """Sends a request and returns the open response; an error answer raises its typed
        exception. body is bytes or a file-like object (sent as it reads)."""
        h = {"User-Agent": "airlock-python/0.1"}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        if json_body is not None:
            body = json.dumps(json_body).encode()
            h["Content-Type"] = "application/json"
        elif body is not None:
            h["Content-Type"] = "application/octet-stream"
        h.update(headers or {})
        if body is None and method in ("POST", "PUT"):
            body = b""
        req = urllib.request.Request(self.url(path, query), data=body, headers=h, method=method)
        try:
            return urllib.request.urlopen(req, timeout=None if stream else self.timeout)
        except urllib.error.HTTPError as e:
            raise _http_error(e) from None
        except urllib.error.URLError as e:
            raise errors.ConnectionError("%s %s: %s" % (method, self.server, e.reason)) from e
        except OSError as e:
            raise errors.ConnectionError("%s %s: %s" % (method, self.server, e)) from e

    def raw(self, method, path, query=None, body=None, json_body=None, headers=None):
        """Sends a request and returns the answer's bytes."""
        with self.open(method, path, query, body, json_body, headers) as resp:
            return resp.read()

    def json(self, method, path, query=None, body=None, json_body=None):
        """Sends a request and decodes its JSON answer (None for an empty one)."""
        b = self.raw(method, path, query, body, json_body, {"Accept": "application/json"})
        return json.loads(b) if b else None


def _http_error(e):
    try:
        body = e.read()
    except OSError:
        body = b""
    code, message = None, None
    try:
        detail = json.loads(body)["error"]
        code, message = detail.get("code"), detail.get("message")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    if not code:
        code = {400: "invalid_argument", 401: "unauthenticated", 404: "not_found", 409: "conflict",
                410: "gone", 413: "payload_too_large", 429: "resource_exhausted", 501: "unimplemented",
                503: "unavailable", 504: "timeout"}.get(e.code, "internal")
        message = message or (body.decode("utf-8", "replace").strip() or e.reason)
    return errors.from_code(code, message, e.code)


_default = None


def default_client():
    """The Client of the environment, made on first use."""
    global _default
    if _default is None:
        _default = Client.from_env()
    return _default
