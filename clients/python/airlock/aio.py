"""The asyncio variant, in Modal's style: every blocking call f also has f.aio(...), a
coroutine that runs f in a worker thread (asyncio.to_thread).

    sb = await airlock.Sandbox.create.aio(timeout=60)
    p = await sb.exec.aio("python3", "-c", "print(1)")
    await p.wait.aio()
    print(await p.stdout.read.aio())
"""

import asyncio
import functools


class blocking:
    """Marks a function or method as blocking: callable as before, and with .aio."""

    def __init__(self, fn):
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, obj, cls=None):
        return _Bound(self._fn.__get__(obj, cls))

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    async def aio(self, *args, **kwargs):
        return await asyncio.to_thread(self._fn, *args, **kwargs)


class _Bound:
    def __init__(self, fn):
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    async def aio(self, *args, **kwargs):
        return await asyncio.to_thread(self._fn, *args, **kwargs)
