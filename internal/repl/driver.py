# Airlock REPL driver: a long-lived Python interpreter that runs one cell at a time for the Go side
# (package repl, see doc.go for the wire protocol). Standard library only; Python >= 3.8.
#
# fd 3 carries command frames in and fd 4 reply frames out; both are moved to high CLOEXEC fds at
# once so user code and its subprocesses never see them. Frames are a 4-byte big-endian length
# followed by UTF-8 JSON. User output goes to the real fds 1 and 2. After each cell the driver
# writes an end marker carrying a fresh random token to fds 1 and 2, then sends the reply with the
# token, so the Go side knows where the cell's output ends whatever the user printed.
#
# Phases of a cell. The *user phase* (compile, exec, repr, rich outputs, flushing user streams)
# runs with _S.active set: SIGINT raises KeyboardInterrupt there. The *driver phase* (restoring
# stdio, markers, reply) and the time between cells run with _S.active clear: SIGINT is ignored.
import os
import sys

# Before anything can import matplotlib: no GUI in a sandbox.
os.environ["MPLBACKEND"] = "Agg"

import ast
import builtins
import fcntl
import io
import json
import linecache
import signal
import struct
import time
import types
import importlib.machinery

_DRIVER_MODULE = sys.modules["__main__"]  # the bootstrap's namespace; kept alive explicitly
_urandom = os.urandom  # bound now: user code replacing os.urandom cannot steer tokens
_write = os.write
_read = os.read


def _hi_fd(fd):
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)


_CMD = _hi_fd(3)
_REP = _hi_fd(4)
os.close(3)
os.close(4)
# Private duplicates of the output pipes: markers go here, and fds 1 and 2 are restored from them
# after a cell that closed or redirected them.
_OUT = _hi_fd(1)
_ERR = _hi_fd(2)


def _null_stdin():
    fd = os.open(os.devnull, os.O_RDONLY)
    if fd != 0:
        os.dup2(fd, 0)
        os.close(fd)


_null_stdin()

_MARK_PREFIX = b"\x1e\x1fairlock-end:"
_MARK_SUFFIX = b"\x1f\x1e"
_CO_COROUTINE = 0x80
_FLAGS = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
_BINARY = ("image/png", "image/jpeg", "image/gif", "application/pdf")  # str values are base64


def _is_text(mime):
    # The Go side's rule (repl.IsText): text types carry UTF-8 text without control characters,
    # every other type carries bytes (base64 on the wire).
    return mime.startswith("text/") or mime.endswith("json")


def _valid_text(s):
    for c in s:
        o = ord(c)
        if (o < 0x20 and c not in "\t\n\r") or o == 0x7F:
            return False
    return True
_REPR_METHODS = (
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)


class _State(object):
    active = False  # user phase: SIGINT raises KeyboardInterrupt
    count = 0  # cells run, for <cell-N>
    display = []  # rich outputs of the current cell
    display_bytes = 0
    display_limit = 16 << 20
    display_items = 256  # cap on the number of rich outputs per cell
    display_dropped = 0  # rich outputs of the current cell left out
    nonce = ""  # the current cell's, echoed in its frames
    limit = 1 << 20  # cap on the result repr, in characters
    shown = []  # figures already displayed in this cell
    loop = None  # asyncio loop for top-level await, created on first use


_S = _State()


# ---- wire -------------------------------------------------------------------------------------


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = _write(fd, view)
        view = view[n:]


def _send(obj):
    body = json.dumps(obj, separators=(",", ":")).encode("ascii")
    _write_all(_REP, struct.pack(">I", len(body)) + body)


def _read_n(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = _read(_CMD, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv():
    head = _read_n(4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    body = _read_n(n)
    if body is None:
        return None
    return json.loads(body.decode("utf-8"))


# ---- stdio ------------------------------------------------------------------------------------


def _text_writer(fd, name):
    raw = io.FileIO(fd, "w", closefd=False)
    try:
        raw.name = name
    except (AttributeError, TypeError):
        pass
    return io.TextIOWrapper(
        io.BufferedWriter(raw), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )


def _text_reader(fd, name):
    raw = io.FileIO(fd, "r", closefd=False)
    try:
        raw.name = name
    except (AttributeError, TypeError):
        pass
    return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="replace")


_ORIGINAL_STDIO = (sys.stdin, sys.stdout, sys.stderr)  # kept alive, never closed
_stdio = [None, None, None]


def _restore_fd(fd, backup):
    """Point fd back at backup's pipe if user code closed or redirected it; make it blocking."""
    try:
        st, bst = os.fstat(fd), os.fstat(backup)
        same = (st.st_dev, st.st_ino) == (bst.st_dev, bst.st_ino)
    except OSError:
        same = False
    if not same:
        try:
            os.dup2(backup, fd)
        except OSError:
            pass
    try:
        if not os.get_blocking(backup):
            os.set_blocking(backup, True)
    except OSError:
        pass


def _reset_stdio():
    """Reinstall the driver's stdio objects (recreated if user code closed them)."""
    try:
        os.fstat(0)
    except OSError:
        _null_stdin()
    _restore_fd(1, _OUT)
    _restore_fd(2, _ERR)
    if _stdio[0] is None or _stdio[0].closed:
        _stdio[0] = _text_reader(0, "<stdin>")
    if _stdio[1] is None or _stdio[1].closed:
        _stdio[1] = _text_writer(1, "<stdout>")
    if _stdio[2] is None or _stdio[2].closed:
        _stdio[2] = _text_writer(2, "<stderr>")
    sys.stdin = sys.__stdin__ = _stdio[0]
    sys.stdout = sys.__stdout__ = _stdio[1]
    sys.stderr = sys.__stderr__ = _stdio[2]


def _flush(streams):
    for s in streams:
        try:
            s.flush()
        except Exception:
            pass


def _mark(fd, token):
    try:
        _write_all(fd, _MARK_PREFIX + token + _MARK_SUFFIX)
        return True
    except OSError:
        return False


# ---- interrupts -------------------------------------------------------------------------------


def _on_sigint(signum, frame):
    if not _S.active:
        return  # between cells, or in the driver phase: a late interrupt is ignored
    f = frame
    while f is not None:
        if f.f_code.co_filename.startswith("<cell-"):
            raise KeyboardInterrupt  # unwinds through exec into the user phase's handler
        f = f.f_back
    # Driver code of the user phase: fire once, so the handler can never raise again in code
    # that is about to leave the protected region.
    _S.active = False
    raise KeyboardInterrupt


def _install_sigint():
    if signal.getsignal(signal.SIGINT) is not _on_sigint:
        signal.signal(signal.SIGINT, _on_sigint)


# ---- rich output ------------------------------------------------------------------------------


def _warn(msg):
    try:
        sys.stderr.write("airlock: %s\n" % msg)
    except Exception:
        pass


def _add_display(mime, data):
    if len(_S.display) >= _S.display_items:
        _warn("display output (%s) dropped: over the per-cell limit of %d outputs" % (mime, _S.display_items))
        _S.display_dropped += 1
        return
    if isinstance(data, (bytes, bytearray)) and _is_text(mime):
        data = bytes(data).decode("utf-8", "replace")
    if isinstance(data, str) and _is_text(mime) and not _valid_text(data):
        _warn("display output (%s) dropped: control characters in text" % (mime,))
        _S.display_dropped += 1
        return
    if isinstance(data, (bytes, bytearray)):
        import base64

        item = {"mime": mime, "data": base64.b64encode(bytes(data)).decode("ascii"), "b64": True}
        size = len(data)
    else:
        item = {"mime": mime, "data": data}
        size = len(data)
    if _S.display_bytes + size > _S.display_limit:
        _warn("display output of %d bytes (%s) dropped: over the per-cell display limit" % (size, mime))
        _S.display_dropped += 1
        return
    _S.display_bytes += size
    _S.display.append(item)


def _is_figure(obj):
    t = type(obj)
    return t.__module__.startswith("matplotlib.") and t.__name__ == "Figure" and hasattr(obj, "savefig")


def _figure_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _normalize(mime, value):
    """Coerce one _repr_*_ value to bytes (binary mimes) or str; None if unusable."""
    if isinstance(value, tuple) and value:
        value = value[0]  # (data, metadata)
    if value is None:
        return None
    if mime in _BINARY:
        if isinstance(value, str):  # some libraries return base64 text
            import base64

            try:
                return base64.b64decode(value)
            except Exception:
                return None
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        return None
    if mime == "application/json" and not isinstance(value, str):
        try:
            return json.dumps(value)
        except Exception:
            return None
    if isinstance(value, (bytes, bytearray)):
        if _is_text(mime):
            return bytes(value).decode("utf-8", "replace")
        return bytes(value)
    if isinstance(value, str):
        return value
    return None


def _bundle(obj):
    """Rich representations of obj as [(mime, bytes|str)], text/plain excluded."""
    if isinstance(obj, type):
        return []  # a class: its _repr_*_ are unbound methods
    if _is_figure(obj):
        _S.shown.append(obj)
        return [("image/png", _figure_png(obj))]
    out = []
    seen = set()
    try:
        mb = getattr(obj, "_repr_mimebundle_", None)
    except Exception:
        mb = None
    if callable(mb):
        try:
            data = mb(include=None, exclude=None)
            if isinstance(data, tuple):
                data = data[0]
            if isinstance(data, dict):
                for mime, value in data.items():
                    if mime == "text/plain" or not isinstance(mime, str):
                        continue
                    value = _normalize(mime, value)
                    if value is not None:
                        out.append((mime, value))
                        seen.add(mime)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            _warn("_repr_mimebundle_ failed: %s: %s" % (type(e).__name__, e))
    for meth, mime in _REPR_METHODS:
        if mime in seen:
            continue
        try:
            f = getattr(obj, meth, None)
        except Exception:
            f = None
        if not callable(f):
            continue
        try:
            value = _normalize(mime, f())
        except KeyboardInterrupt:
            raise
        except Exception as e:
            _warn("%s failed: %s: %s" % (meth, type(e).__name__, e))
            continue
        if value is not None:
            out.append((mime, value))
            seen.add(mime)
    return out


def display(*objs, **kwargs):
    """Show objects as rich output of the current cell (like IPython's display).

    With raw=True each object is a dict mapping MIME type to data."""
    raw = kwargs.get("raw", False)
    for obj in objs:
        if raw and isinstance(obj, dict):
            items = [(m, _normalize(m, v)) for m, v in obj.items()]
            items = [(m, v) for m, v in items if v is not None]
        else:
            items = _bundle(obj)
            if not items:
                items = [("text/plain", repr(obj))]
        for mime, data in items:
            _add_display(mime, data)


def _flush_figures(plt=None):
    """Display every open pyplot figure as PNG (unless already displayed), then close them all."""
    if plt is None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
    try:
        for num in plt.get_fignums():
            fig = plt.figure(num)
            if any(fig is f for f in _S.shown):
                continue
            _add_display("image/png", _figure_png(fig))
    except KeyboardInterrupt:
        raise
    except Exception as e:
        _warn("saving figures failed: %s: %s" % (type(e).__name__, e))
    finally:
        try:
            plt.close("all")
        except Exception:
            pass


class _PyplotLoader(object):
    """Wraps matplotlib.pyplot's loader so that plt.show() displays figures, as in a notebook."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        orig = getattr(module, "show", None)

        def show(*args, **kwargs):
            _flush_figures(module)

        show.__doc__ = getattr(orig, "__doc__", None)
        show.__wrapped__ = orig
        module.show = show

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _PyplotFinder(object):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "matplotlib.pyplot":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _PyplotLoader(spec.loader)
        return spec

    def invalidate_caches(self):
        pass


# ---- cells ------------------------------------------------------------------------------------


def _error(e):
    import traceback

    try:
        te = traceback.TracebackException(type(e), e, e.__traceback__)
        _strip_driver(te, set())
        chunks = list(te.format())
    except BaseException:
        chunks = ["%s\n" % type(e).__name__]
    lines = []
    for chunk in chunks:
        lines.extend(chunk.rstrip("\n").split("\n"))
    try:
        value = str(e)
    except BaseException:
        value = "<exception str() failed>"
    # Bounded like output: an exception can carry any amount of text (the Go side caps again).
    value = _clip(value, _ERROR_CAP)
    kept, size = [], 0
    for line in lines[-_TRACEBACK_LINES:]:
        line = _clip(line, 4096)
        size += len(line)
        if size > _ERROR_CAP:
            kept.append("... (traceback truncated)")
            break
        kept.append(line)
    return {"name": _clip(type(e).__name__, 256), "value": value, "traceback": kept}


_ERROR_CAP = 64 << 10
_DRIVER_FILE = _error.__code__.co_filename


def _strip_driver(te, seen):
    """Drop the driver's frames from te and the exceptions chained to it: the traceback shows the
    user's code only (the driver's cell runner before it, its SIGINT handler after it)."""
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack[:] = [f for f in te.stack if f.filename != _DRIVER_FILE]
    for other in (te.__cause__, te.__context__):
        if other is not None:
            _strip_driver(other, seen)
    for other in getattr(te, "exceptions", None) or ():
        _strip_driver(other, seen)
_TRACEBACK_LINES = 200


def _clip(s, n):
    return s if len(s) <= n else s[:n] + "... (truncated)"


def _await(coro):
    import asyncio

    if _S.loop is None or _S.loop.is_closed():
        _S.loop = asyncio.new_event_loop()
    asyncio.set_event_loop(_S.loop)
    return _S.loop.run_until_complete(coro)


def _exec(code, ns):
    if code.co_flags & _CO_COROUTINE:
        return _await(eval(code, ns))
    return eval(code, ns)


def _user_phase(msg, ns, reply):
    """Compile and run the cell and collect its outputs. Only KeyboardInterrupt escapes."""
    src = msg.get("code") or ""
    if src.strip():
        _S.count += 1
        filename = "<cell-%d>" % _S.count
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    else:
        # As in IPython, an empty cell takes no number: no traceback can point into it. (The
        # warm pool runs one in each session it prepares, to pay a first cell's one-time costs
        # ahead, and the user's first cell is still <cell-1>.)
        filename = "<cell>"
    try:
        tree = ast.parse(src, filename, "exec")
        last = None
        # As in IPython, a trailing semicolon suppresses the result.
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not src.rstrip().endswith(";"):
            last = ast.Expression(tree.body.pop().value)
        body = compile(tree, filename, "exec", _FLAGS)
        expr = compile(last, filename, "eval", _FLAGS) if last is not None else None
        _exec(body, ns)
        if expr is not None:
            value = _exec(expr, ns)
            if value is not None:
                try:
                    r = repr(value)
                except KeyboardInterrupt:
                    raise
                except Exception as e:
                    r = "<repr() failed: %s: %s>" % (type(e).__name__, e)
                if len(r) * 4 > _S.limit:  # maybe over the limit, which counts UTF-8 bytes
                    b = r.encode("utf-8", "backslashreplace")
                    if len(b) > _S.limit:
                        r = b[: _S.limit].decode("utf-8", "ignore")
                reply["result"] = r
                for mime, data in _bundle(value):
                    _add_display(mime, data)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit included: exit() must not end the session
        reply["error"] = _error(e)
    _flush_figures()
    del _S.shown[:]
    _flush((sys.stdout, sys.stderr))


def _run(msg, ns):
    reply = {"op": "done", "interrupted": False}
    _S.limit = int(msg.get("limit") or (1 << 20))
    _S.display_limit = int(msg.get("display_limit") or (16 << 20))
    _S.display_items = int(msg.get("display_items") or 256)
    _S.nonce = str(msg.get("nonce") or "")
    _S.display_bytes = sum(len(d["data"]) for d in _S.display)
    _S.display_dropped = 0
    _reset_stdio()
    _install_sigint()
    t0 = time.perf_counter()
    try:
        try:
            _S.active = True
            _send({"op": "started", "nonce": _S.nonce})
            _user_phase(msg, ns, reply)
        finally:
            _S.active = False
    except KeyboardInterrupt as e:
        reply["interrupted"] = True
        reply["error"] = _error(e)
    reply["execution_time"] = time.perf_counter() - t0
    _finish(reply)


def _finish(reply):
    """Driver phase: restore stdio, mark the end of both streams, send the reply."""
    _install_sigint()
    items, _S.display = _S.display, []
    _S.display_bytes = 0
    _reset_stdio()
    reply["display"] = _checked_display(items)
    reply["display_dropped"] = _S.display_dropped
    _S.display_dropped = 0
    reply["nonce"] = _S.nonce
    _flush((sys.stdout, sys.stderr))  # the driver's own objects: no user code runs here
    token = _urandom(16).hex()
    t = token.encode("ascii")
    reply["token"] = token
    reply["marked"] = [_mark(_OUT, t), _mark(_ERR, t)]
    _send(reply)


def _checked_display(items):
    """The items cell code left in _S.display (it may append anything), within the limits."""
    out, dropped, size = [], 0, 0
    try:
        for d in items:
            ok = (
                type(d) is dict
                and type(d.get("mime")) is str
                and type(d.get("data")) is str
                and len(out) < _S.display_items
                and not (d.get("b64") and _is_text(d["mime"]))
            )
            if ok:
                size += len(d["data"])
                ok = size <= 2 * _S.display_limit  # base64 of the byte limit, with room
            if ok:
                out.append({"mime": d["mime"], "data": d["data"], "b64": bool(d.get("b64"))})
            else:
                dropped += 1
    except Exception:
        dropped += 1
    _S.display_dropped += dropped
    if dropped:
        _warn(
            "%d display outputs dropped: over the per-cell limit of %d outputs, base64 data for a text type,"
            " or malformed" % (dropped, _S.display_items)
        )
    return out


def _main():
    # User code runs in a fresh __main__ module, so pickle and multiprocessing find its names.
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    ns = main.__dict__
    builtins.display = display
    sys.meta_path.insert(0, _PyplotFinder())
    sys.argv = [""]
    _reset_stdio()
    _install_sigint()
    while True:
        try:
            msg = _recv()
        except OSError:
            break
        if msg is None:
            break
        op = msg.get("op")
        try:
            if op == "run":
                _run(msg, ns)
            elif op == "ping":
                _send({"op": "pong", "pid": os.getpid(), "version": sys.version.split()[0]})
            else:
                _send({"op": "error", "message": "unknown op %r" % (op,)})
        except OSError:
            break  # the reply pipe is gone
        except BaseException as e:  # a driver bug: report it rather than hang the Go side
            try:
                _S.active = False
                _send(
                    {
                        "op": "done",
                        "nonce": _S.nonce,
                        "interrupted": False,
                        "token": "",
                        "marked": [False, False],
                        "display": [],
                        "error": {"name": "DriverError", "value": "%s: %s" % (type(e).__name__, e), "traceback": []},
                    }
                )
            except BaseException:
                break
    os._exit(0)


_main()
