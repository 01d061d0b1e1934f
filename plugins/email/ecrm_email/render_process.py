"""The sandbox processes that render e-mail templates.

Templates run in child processes started with ``subprocess`` (fork + exec of
a fresh interpreter: nothing of the parent's state, threads, sockets or
database connections is inherited), each rendering one job (a template and a
chunk of contexts) at a time:

* the child lowers its own limits before its first job: ``RLIMIT_AS`` (its
  address space: its size after start-up plus ``max_memory``),
  ``RLIMIT_CPU`` (raised before each item to what it has used plus
  ``max_seconds`` + 2 s: a backstop if the parent is gone) and
  ``RLIMIT_CORE`` (no core files);
* it stops an item at ``max_seconds`` itself (``SIGALRM``), with the
  template line;
* the parent waits at most ``max_seconds`` + :data:`GRACE` seconds for each
  item's result, kills the child if none came, and starts another one;
* a child that dies (a native crash such as SIGSEGV, the CPU limit, out of
  memory in native code) fails the item it was rendering: the rest of the
  chunk is rendered by a new child.

Messages are length-prefixed pickles.  The parent reads the child's with an
unpickler that builds plain data only (no classes: a child that ran hostile
code cannot make the parent import or call anything).  The child asks the
parent for template sources it was not given (``need``), so it never needs
the database.
"""

from __future__ import annotations

import atexit
import contextlib
import copyreg
import io
import json
import math
import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["GRACE", "SandboxUnavailable", "check_job", "child_main", "pool", "render_job", "render_jobs"]

#: Seconds the parent waits past ``max_seconds`` before it kills a child.
GRACE = 0.5
#: Seconds a new child may take to start (imports on a busy machine).
STARTUP_TIMEOUT = 60.0
#: After this many items in a row failed the same way in a job without one
#: success, the rest of the job fails with that error without being tried.
BREAKER = 3

_HEADER = struct.Struct(">Q")
_MAX_FRAME = 1 << 31


class SandboxUnavailable(RuntimeError):
    """No sandbox process could be started (not a template's fault)."""


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


# ---------------------------------------------------------------------------
# Framing and (de)serialising
# ---------------------------------------------------------------------------


def _plain_types() -> frozenset[type]:
    from collections import OrderedDict
    from datetime import date, datetime, time, timedelta, timezone
    from decimal import Decimal
    from uuid import UUID
    from zoneinfo import ZoneInfo

    from markupsafe import Markup

    return frozenset(
        {Decimal, datetime, date, time, timedelta, timezone, ZoneInfo, UUID, OrderedDict, Markup, complex, range}
    )


_PLAIN_TYPES = _plain_types()


def _zoneinfo(zone: Any) -> tuple[Any, tuple[str]]:
    if zone.key is None:
        raise NotPlain("a ZoneInfo without a key is not plain data")
    return type(zone), (zone.key,)  # ZoneInfo(key), not ZoneInfo._unpickle


def _dispatch() -> dict[Any, Any]:
    from zoneinfo import ZoneInfo

    table = copyreg.dispatch_table.copy()
    table[ZoneInfo] = _zoneinfo
    return table


_DISPATCH = _dispatch()


class NotPlain(TypeError):
    """A context holds an object that is not plain data."""


class _ContextPickler(pickle.Pickler):
    """Pickles plain data only (the child must not import the caller's classes)."""

    def reducer_override(self, obj: Any) -> Any:
        # (str, int, float, list, dict... never get here) instances of the
        # other plain types, and those types referenced by name
        if type(obj) in _PLAIN_TYPES or obj in _PLAIN_TYPES:
            return NotImplemented
        raise NotPlain(f"{type(obj).__name__} is not plain data")


def dumps_context(ctx: Any) -> bytes:
    """``ctx`` pickled for the child; :class:`NotPlain` for objects."""
    buf = io.BytesIO()
    p = _ContextPickler(buf, protocol=5)
    p.dispatch_table = _DISPATCH
    p.dump(ctx)
    return buf.getvalue()


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the sandbox process sent a {module}.{name}: refused")


def _loads_plain(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


def _frame(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=5)
    return _HEADER.pack(len(body)) + body


# ---------------------------------------------------------------------------
# The parent's handle on one child
# ---------------------------------------------------------------------------

_BOOT = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
    "from ecrm_email.render_process import child_main; child_main()"
)


class _Worker:
    def __init__(self) -> None:
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT, json.dumps(paths)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C for the host is not for the sandbox
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)
        self.buf = bytearray()
        self.pid = os.getpid()
        self._rsel = selectors.DefaultSelector()
        self._rsel.register(self.rfd, selectors.EVENT_READ)
        self._wsel = selectors.DefaultSelector()
        self._wsel.register(self.wfd, selectors.EVENT_WRITE)
        try:
            hello = self.recv(time.monotonic() + STARTUP_TIMEOUT)
        except (_Timeout, _Died) as exc:
            self.kill()
            raise SandboxUnavailable(f"the template sandbox process did not start ({self.death()})") from exc
        if not (isinstance(hello, tuple) and hello and hello[0] == "ready"):
            self.kill()
            reason = hello[1] if isinstance(hello, tuple) and len(hello) > 1 else hello
            raise SandboxUnavailable(f"the template sandbox process did not start: {reason}")

    def send(self, obj: Any, deadline: float) -> None:
        data = memoryview(_frame(obj))
        while data:
            try:
                n = os.write(self.wfd, data)
            except BlockingIOError:
                n = 0
            except OSError:  # BrokenPipeError: it died
                raise _Died() from None
            data = data[n:]
            if data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Timeout()
                self._wsel.select(left)

    def recv(self, deadline: float) -> Any:
        need = _HEADER.size
        size = None
        while True:
            if size is None and len(self.buf) >= need:
                (size,) = _HEADER.unpack_from(self.buf)
                if size > _MAX_FRAME:
                    raise _Died()
                need = _HEADER.size + size
            if size is not None and len(self.buf) >= need:
                body = bytes(self.buf[_HEADER.size : need])
                del self.buf[:need]
                try:
                    return _loads_plain(body)
                except Exception:
                    raise _Died() from None
            try:
                chunk = os.read(self.rfd, max(need - len(self.buf), 1 << 16))
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Timeout() from None
                self._rsel.select(left)
                continue
            except OSError:
                raise _Died() from None
            if not chunk:
                raise _Died()
            self.buf += chunk

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.close()

    def close(self) -> None:
        for sel in (self._rsel, self._wsel):
            with contextlib.suppress(Exception):
                sel.close()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def death(self) -> str:
        """How the child ended (after :meth:`kill` or when it died)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        rc = self.proc.returncode
        if rc is None:
            return "still running"
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            return f"crashed with {name}"
        return f"exited with status {rc}"


class Pool:
    """Sandbox processes shared by every :class:`~ecrm_email.templates.Templates`
    of this process, started when first needed, at most :attr:`size` at once."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or max(2, min(4, os.cpu_count() or 1))
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._count = 0
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        # a forked host process: the children belong to the parent; forget them
        for w in self._idle:
            for fd in (w.rfd, w.wfd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._idle = []
        self._count = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()

    def acquire(self) -> _Worker:
        if os.getpid() != self._pid:
            self._after_fork()
        with self._cond:
            while True:
                while self._idle:
                    w = self._idle.pop()
                    if w.alive():
                        return w
                    w.close()
                    self._count -= 1
                if self._count < self.size:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            return _Worker()
        except BaseException:
            self.discard(None)
            raise

    def release(self, worker: _Worker) -> None:
        with self._cond:
            if worker.pid == self._pid:
                self._idle.append(worker)
            self._cond.notify()

    def discard(self, worker: _Worker | None) -> None:
        if worker is not None:
            worker.kill()
        with self._cond:
            self._count = max(0, self._count - 1)
            self._cond.notify()

    def close(self) -> None:
        """Stop the idle children (those in use stop when their job ends)."""
        if os.getpid() != self._pid:
            return
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for w in idle:
            w.close()


_POOL: Pool | None = None
_POOL_LOCK = threading.Lock()


def pool(size: int | None = None) -> Pool:
    """The process-wide pool; ``size`` raises its number of processes."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = Pool(size)
            atexit.register(_POOL.close)
        elif size is not None and size > _POOL.size:
            with _POOL._cond:
                _POOL.size = size
                _POOL._cond.notify_all()
        return _POOL


# ---------------------------------------------------------------------------
# Running jobs (parent side)
# ---------------------------------------------------------------------------

Fetch = Callable[[str, str], "tuple[str, str] | None"]
Result = tuple[str, Any]  # ("ok", (subject, html, text, links)) or ("error", {field, value, problem, fix})


def _problem(problem: str, fix: str) -> dict[str, Any]:
    return {"field": "template", "value": None, "problem": problem, "fix": fix}


def _error(problem: str, fix: str) -> Result:
    return "error", _problem(problem, fix)


def render_job(
    job: Mapping[str, Any], contexts: Sequence[bytes], fetch: Fetch, *, max_memory: int, workers: int | None = None
) -> list[Result]:
    """Render ``contexts`` (pickled with :func:`dumps_context`) with ``job``
    in sandbox processes: one result per context, in order."""
    max_seconds = float(job["max_seconds"])
    per_item = max_seconds + GRACE
    results: list[Result | None] = [None] * len(contexts)
    streak: list[Result] = []
    start = 0
    p = pool(workers)
    lost = 0
    while start < len(contexts):
        worker = p.acquire()
        i = start
        ok = False
        try:
            try:
                worker.send(
                    ("render", {**job, "items": list(contexts[start:]), "max_memory": max_memory}),
                    time.monotonic() + STARTUP_TIMEOUT,
                )
            except (_Died, _Timeout):  # it was gone before it began: not this context's fault
                lost += 1
                if lost > 2:
                    raise SandboxUnavailable(f"the template sandbox process stopped ({worker.death()})") from None
                continue
            deadline = time.monotonic() + per_item
            while i < len(contexts):
                msg = worker.recv(deadline)
                if msg[0] == "need":
                    t0 = time.monotonic()
                    found = fetch(msg[1], msg[2])
                    worker.send(("source", found), t0 + STARTUP_TIMEOUT)
                    deadline += time.monotonic() - t0  # the parent's time is not the template's
                    continue
                if msg[0] != "done":
                    raise _Died()
                results[i] = msg[1]
                if msg[1][0] == "ok":
                    streak = []
                elif msg[2]:
                    streak.append(msg[1])
                i += 1
                deadline = time.monotonic() + per_item
                if msg[2]:  # the child stops after this item (out of memory, timer): start another
                    break
            else:
                ok = True
        except _Timeout:
            worker.kill()
            results[i] = _error(
                f"rendering took longer than {max_seconds:g} s (max_seconds); the sandbox process was stopped",
                "render less: fewer loops, smaller values; a single slow filter or function counts too",
            )
            streak.append(results[i])  # type: ignore[arg-type]
            i += 1
        except _Died:
            worker.kill()
            how = worker.death()
            hint = " (max_memory or max_seconds may have been reached in native code)" if "SIGSEGV" not in how else ""
            results[i] = _error(
                f"rendering {how}: the sandbox process died{hint}",
                "render less or nest less deeply: loops that open many elements, huge values",
            )
            streak.append(results[i])  # type: ignore[arg-type]
            i += 1
        finally:
            if ok:
                p.release(worker)
            else:
                p.discard(worker)
        start = i
        if len(streak) >= BREAKER and all(r is not None and r[0] == "error" for r in results[:start]):
            _, err = streak[-1]
            skipped = _error(
                f"{err['problem']} (not rendered: the template failed this way for the {len(streak)} messages before)",
                err["fix"],
            )
            for k in range(start, len(contexts)):
                results[k] = skipped
            break
    return [r if r is not None else _error("not rendered", "try again") for r in results]


#: A batch is split across sandbox processes in slices of at least this many contexts.
MIN_SLICE = 50
_EXECUTOR: Any = None


def render_jobs(
    job: Mapping[str, Any], contexts: Sequence[bytes], fetch: Fetch, *, max_memory: int, workers: int | None = None
) -> list[Result]:
    """:func:`render_job`, with a large batch split across the pool's processes (in parallel)."""
    global _EXECUTOR
    p = pool(workers)
    slices = min(p.size, len(contexts) // MIN_SLICE)
    if slices < 2:
        return render_job(job, contexts, fetch, max_memory=max_memory, workers=workers)
    with _POOL_LOCK:
        if _EXECUTOR is None or _EXECUTOR._max_workers < p.size:
            from concurrent.futures import ThreadPoolExecutor

            _EXECUTOR = ThreadPoolExecutor(max_workers=p.size, thread_name_prefix="ecrm-render")
        executor = _EXECUTOR
    step = -(-len(contexts) // slices)
    futures = [
        executor.submit(render_job, job, contexts[k : k + step], fetch, max_memory=max_memory, workers=workers)
        for k in range(0, len(contexts), step)
    ]
    return [r for f in futures for r in f.result()]


def check_job(job: Mapping[str, Any], *, max_memory: int, workers: int | None = None) -> dict[str, Any] | None:
    """Compile the parts of ``job`` in a sandbox process: the first syntax error, or None."""
    p = pool(workers)
    worker = p.acquire()
    ok = False
    try:
        worker.send(("check", {**job, "max_memory": max_memory}), time.monotonic() + STARTUP_TIMEOUT)
        msg = worker.recv(time.monotonic() + float(job["max_seconds"]) + GRACE)
        ok = True
        result: dict[str, Any] | None = msg[1]
        return result
    except _Timeout:
        return _problem(f"compiling took longer than {job['max_seconds']:g} s (max_seconds)", "send a smaller template")
    except _Died:
        return _problem(f"compiling {worker.death()}", "send a smaller, less nested template")
    finally:
        if ok:
            p.release(worker)
        else:
            p.discard(worker)


# ---------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------


class _Deadline(BaseException):
    """``max_seconds`` passed (raised by the SIGALRM handler): not an Exception,
    so that no ``except Exception`` in a library swallows it."""


def child_main() -> None:  # pragma: no cover - runs in the sandbox process (tests exercise it)
    """The sandbox process: read jobs from stdin, write results to stdout."""
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # a stray print must not corrupt the protocol
    out = os.fdopen(wfd, "wb", buffering=0)
    inp = os.fdopen(rfd, "rb", buffering=0)

    def send(obj: Any) -> None:
        out.write(_frame(obj))

    def read() -> Any:
        header = _read_exact(inp, _HEADER.size)
        if header is None:
            return None
        body = _read_exact(inp, _HEADER.unpack(header)[0])
        return None if body is None else pickle.loads(body)

    try:
        from .renderer import Renderer

        def fetch(workspace: str, name: str) -> Any:
            send(("need", workspace, name))
            reply = read()
            if reply is None:
                raise SystemExit(0)
            return reply[1]

        renderer = Renderer(fetch)
        renderer.start({"workspace": "-", "bundle": {}})
        renderer.item(
            {"workspace": "-", "roots": {"subject": ("inline", "s"), "html": ("inline", "<p>{{ x }}</p>")},
             "max_output": 1000, "max_seconds": 5.0, "track": None},
            {"x": 1},
        )  # fmt: skip
        limits = _Limits()
    except BaseException as exc:
        send(("failed", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    send(("ready", os.getpid()))
    armed = [False]

    def alarm(signum: int, frame: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise _Deadline()

    signal.signal(signal.SIGALRM, alarm)
    while True:
        msg = read()
        if msg is None:
            return
        kind, job = msg
        limits.memory(job["max_memory"])
        if kind == "check":
            try:
                send(("checked", renderer.check(job)))
            except BaseException:
                send(("checked", _problem("could not compile the template", "send a smaller template")))
                return
            continue
        renderer.start(job)
        seconds = float(job["max_seconds"])
        for blob in job["items"]:
            limits.cpu(seconds)
            armed[0] = True
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                result = renderer.item(job, pickle.loads(blob))
            except _Deadline as exc:
                renderer.recycle = True  # a library may have been stopped half-way: start afresh
                result = "error", renderer.interrupted(exc, f"rendering took longer than {seconds:g} s (max_seconds)")
            except MemoryError:
                renderer.recycle = True
                result = _error("out of memory (max_memory)", "render less: smaller values, fewer loops")
            except Exception as exc:  # a bug: report it, and start afresh
                renderer.recycle = True
                result = _error(f"internal error: {type(exc).__name__}", "report this to the ecrm developers")
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            send(("done", result, renderer.recycle))
            if renderer.recycle:
                return


def _read_exact(f: Any, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = f.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class _Limits:
    """The child's OS limits (a no-op where ``resource`` is missing)."""

    def __init__(self) -> None:
        try:
            import resource
        except ImportError:  # pragma: no cover - not POSIX
            self.resource: Any = None
            return
        self.resource = resource
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        self.base = _address_space()
        self.current = -1

    def memory(self, max_memory: int) -> None:
        r = self.resource
        if r is None or self.base is None or max_memory == self.current:
            return
        _soft, hard = r.getrlimit(r.RLIMIT_AS)
        want = self.base + max_memory
        if hard != r.RLIM_INFINITY:
            want = min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            r.setrlimit(r.RLIMIT_AS, (want, hard))
            self.current = max_memory

    def cpu(self, seconds: float) -> None:
        r = self.resource
        if r is None:
            return
        used = time.process_time()
        _soft, hard = r.getrlimit(r.RLIMIT_CPU)
        want = int(used) + math.ceil(seconds) + 2
        if hard != r.RLIM_INFINITY:
            want = min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            r.setrlimit(r.RLIMIT_CPU, (want, hard))


def _address_space() -> int | None:
    """This process's virtual size in bytes (Linux), else None (no RLIMIT_AS)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
