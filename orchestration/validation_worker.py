"""Great Expectations imported ahead of time, in a process of its own, for the validations of one `privdom run`.

Importing GX and making its first context costs 1.0-1.4 s on the 2-core machine, and a run paid it in its first
validation, inside the first ingest step with new rows. On a day's delivery that was most of the step (a 1M
history's new day: 1.34 s of checks for channel events against 0.53 s for orders; docs/performance.md,
"Twenty-first session"). A `privdom run` therefore starts a worker process as it begins (`warm_validation`).
The worker imports GX, makes a context and validates a one-row query once, while the run loads its
definitions. The ingest steps then send it their validations (`validate`): the source's name, the memory
limit and where the run's new rows are (the Parquet parts of a `SpilledFrame`, by `state()`: the rows are
read there, never sent). It runs `validate_contract` on them, the same function the ingest step would run,
and sends back the `ContractValidation`. Its `seconds` are what the step waited, any wait for the worker to
be ready included.

- The warm-up runs in a thread of the worker at niceness 10 (on Linux, niceness is per thread): the run's
  definitions and the warm dbt server's import, which the run needs sooner, get the CPU first. The worker's
  main thread, which validates, keeps the run's priority: a validation beside a load (`_load_beside`) shares
  the CPU with it as before. This module imports nothing heavy, so the worker's first imports happen in
  that thread too.
- Anything that is not a SpilledFrame with rows (a pandas frame in tests, an empty delivery) is validated in
  the calling process, as before.
- An exception raised by a validation in the worker is raised in the caller: the same exception (with the
  worker's traceback as a note) when it survives pickling both ways, else a RuntimeError carrying its type,
  message and traceback.
- A worker that cannot be started or has died (its connection closed or broken) is given up for the rest of
  the run, with a warning on the run's log; the validation that found out, and every later one, run in the
  calling process. A run never depends on the worker. There is no timeout: a worker that hangs holds the step
  as GX hanging in the run's process would (Ctrl-C ends both).
- The worker ends when the run ends it (`release`, `stop`: SIGTERM), when its connection to the run closes
  (the run's process ended, even killed), or when it is killed. It ignores SIGINT: a Ctrl-C in the terminal
  reaches the whole process group, and the run, not the worker, decides what follows. A dbt step calls
  `release()` when it starts: by then every raw asset of the run has validated (they are all upstream of
  staging), and the dbt steps need the memory (~0.25 GiB for the worker).

Only `privdom run` (and `privdom demo`) starts the worker; `PRIVDOM_GX_WARM=0` turns it off (validation then
imports GX in the run's process, as Dagster's UI runs and the tests that call validate_contract do).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

ENV_SWITCH = "PRIVDOM_GX_WARM"
STOP_SECONDS = 5.0  # how long `stop` waits for the worker to end before it kills it
WARM_UP_NICENESS = 10  # the warm-up thread's niceness (see the module docstring)

_log = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


# ------------------------------------------------------------------------------------------------ the worker
def _warm_up() -> None:
    """In a thread of its own at lower priority: import GX, make a context and validate a one-row query, what a
    run's first validation would otherwise pay. A failure is left to the first validation, which meets the
    same problem and reports it."""
    with contextlib.suppress(AttributeError, OSError):  # per-thread niceness: Linux; elsewhere the default
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WARM_UP_NICENESS)
    try:
        from orchestration import quality

        ctx = quality._context()  # first: it keeps scipy.stats lazy (quality._defer_scipy_stats) and freezes GX
        import great_expectations as gx

        suite = gx.ExpectationSuite(name="privdom_warm_up")
        suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column="x"))
        quality._results(ctx, "SELECT 1 AS x", "warm_up", suite, complete=False)
    except Exception:  # noqa: BLE001, S110 - see the docstring
        pass


def _error_reply(exc: BaseException) -> tuple[Any, ...]:
    try:
        data: bytes | None = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:  # noqa: BLE001 - any failure means: send it as text
        data = None
    return ("error", data, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def serve(conn: Connection) -> None:
    """The worker's loop: answer ("validate", source, frame state, memory limit) requests until the connection
    closes; the warm-up runs beside it and is waited for before the first validation."""
    import warnings

    from orchestration import longlived

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")  # nobody reads the worker's stderr; what matters comes back as results
    longlived.enable()  # a process for one run: GX's modules leave the collector's full passes (quality._context)
    warm = threading.Thread(target=_warm_up, name="privdom-gx-warm-up", daemon=True)
    warm.start()
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the run's process is gone
            return
        warm.join()
        from orchestration.quality import SpilledFrame, validate_contract

        _, source, state, memory_limit = request
        try:
            reply: tuple[Any, ...] = ("ok", validate_contract(source, SpilledFrame.from_state(state), memory_limit=memory_limit))
        except Exception as exc:  # noqa: BLE001 - sent to the caller, who raises it (anything else ends the worker)
            reply = _error_reply(exc)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def main(argv: list[str] | None = None) -> None:
    """Entry point of the worker process: `python -m orchestration.validation_worker <fd of its end of the socket
    pair>`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        fd = int(argv[0])
        os.set_inheritable(fd, False)  # passed to this process only, not to any it might start
        serve(Connection(fd))
    finally:
        os._exit(0)  # no interpreter teardown: nothing of it is needed, and GX's modules make it slow


# ------------------------------------------------------------------------------------------------ the run's side
class ValidationWorker:
    """The run's handle on its worker: `start()`, `validate(...)`, `stop()`."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._conn is not None

    def start(self) -> ValidationWorker:
        if self.process is not None:
            raise RuntimeError("the validation worker is already started")
        ours, theirs = socket.socketpair()
        try:
            # -P: the directory it is started from is not put on sys.path. -m, not -c: PySpark, which GX imports,
            # takes a main module without a file for its doctests and exits the process (sys.exit(0))
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "orchestration.validation_worker", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        return self

    def _close(self) -> int | None:
        """Close the connection and end the process (SIGTERM: it holds nothing that needs a clean end); its exit
        status (negative: the signal that ended it), or None without a process."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
        try:
            return process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def validate(self, source: str, frame: Any, *, memory_limit: str | None = None):
        """`validate_contract(source, frame, memory_limit=...)`, run by the worker when `frame` is a
        SpilledFrame with rows and the worker is alive, else here."""
        from orchestration.quality import SpilledFrame, validate_contract

        if not isinstance(frame, SpilledFrame) or len(frame) == 0:
            return validate_contract(source, frame, memory_limit=memory_limit)
        started = time.perf_counter()
        reply = None
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(("validate", source, frame.state(), memory_limit))
                    reply = self._conn.recv()
                except (EOFError, OSError) as exc:
                    status = self._close()
                    _log.warning("privdom: the validation worker is gone (%s; exit status %s); validating in this "
                                 "process from now on", f"{type(exc).__name__}: {exc}", status)
                except BaseException:
                    # interrupted between the request and its reply (Ctrl-C, Dagster's interruption): the reply
                    # would be read by the next request, so the worker is not used again
                    self._close()
                    raise
        if reply is None:
            result = validate_contract(source, frame, memory_limit=memory_limit)
        elif reply[0] == "ok":
            result = reply[1]
        else:
            raise _remote_error(source, *reply[1:])
        result.seconds = time.perf_counter() - started  # what the step waited, the worker included
        return result

    def stop(self) -> None:
        """End the worker (SIGTERM; SIGKILL after STOP_SECONDS) and forget it. Idempotent. A validation in
        progress is waited for (it holds the lock)."""
        with self._lock:
            self._close()


def _remote_error(source: str, data: bytes | None, text: str, remote: str) -> BaseException:
    """The exception a validation raised in the worker, to raise here."""
    exc = None
    if data is not None:
        try:
            exc = pickle.loads(data)
        except Exception:  # noqa: BLE001 - rebuilt as text below
            exc = None
    if not isinstance(exc, BaseException):
        return RuntimeError(f"validation of {source} failed in the validation worker: {text}\n{remote}")
    exc.add_note(f"(raised in the validation worker)\n{remote}")
    return exc


_ACTIVE: ValidationWorker | None = None


def validate(source: str, frame: Any, *, memory_limit: str | None = None):
    """Validate `frame` against `source`'s contract: in this run's worker when there is one, else here."""
    worker = _ACTIVE
    if worker is not None and worker.alive:
        return worker.validate(source, frame, memory_limit=memory_limit)
    from orchestration.quality import validate_contract

    return validate_contract(source, frame, memory_limit=memory_limit)


def release() -> None:
    """End this process's worker, if any: no validation is left to send it (see the module docstring)."""
    worker = _ACTIVE
    if worker is not None:
        worker.stop()


@contextlib.contextmanager
def warm_validation() -> Iterator[ValidationWorker | None]:
    """Start a worker for the validations of this block (unless PRIVDOM_GX_WARM=0) and stop it at the end."""
    global _ACTIVE
    if not enabled() or _ACTIVE is not None:
        yield None
        return
    worker = ValidationWorker()
    try:
        worker.start()
    except OSError as exc:  # no socket pair or no process: validation happens here, as without the worker
        _log.warning("privdom: the validation worker could not start (%s); validating in this process", exc)
        yield None
        return
    _ACTIVE = worker
    try:
        yield worker
    finally:
        _ACTIVE = None
        worker.stop()


if __name__ == "__main__":
    main()
