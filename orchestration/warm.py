"""A warm fork server for dbt: every dbt command of a run starts with dbt already imported.

dagster-dbt runs dbt as a subprocess (``Popen([dbt_executable, ...])``, reading its JSON log lines). Each
such process imports dbt-core and its adapter (~1.8 s) and tears the interpreter down at exit (~0.5 s)
before and after its first node: three times per ``privdom run`` (docs/performance.md, "The new day's floor").

``WarmServer`` starts one process that imports dbt once and listens on a Unix socket in a private temporary
directory. It writes a small client there (a /bin/sh wrapper named ``dbt`` that runs ``python -I -S
client.py``: stdlib only), which ``privdom run`` hands to dagster-dbt as the dbt executable. The client connects
and passes its argv, environment, working directory and its standard input, output and error (the file
descriptors themselves, ``SCM_RIGHTS``); the server forks a child, which takes those over and runs dbt's
command line as the dbt executable would, in a process that already has dbt imported. The client forwards
SIGINT and SIGTERM to that child (dagster-dbt interrupts dbt with SIGINT; through a pidfd, so never to a
reused pid), waits for the child's exit status and for the child itself to be gone, and exits with that
status. If the client is killed, the child kills itself, as a dbt process killed directly would be gone.
dbt's output goes straight to the pipe dagster-dbt reads; nothing passes through the server.

If the server cannot be reached (not started yet, stopped, crashed), the client runs the real dbt executable
in its place (``execv``): the run never depends on the server. The server stops when ``stop()`` is called
(by PID, SIGTERM), or by itself when its parent process is gone.

Each command runs in a fresh child of a server that has never run one, so nothing carries over from one
command to the next. ``PRIVDOM_DBT_WARM=0`` turns the server off (dbt is then started as before).
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from orchestration.scratch import pid_alive

ENV_SWITCH = "PRIVDOM_DBT_WARM"
SOCKET_NAME = "dbt.sock"
CLIENT_NAME = "dbt"
CLIENT_CODE_NAME = "client.py"
PID_NAME = "server.pid"
OWNER_NAME = "owner.pid"
READY_NAME = "ready"  # written by the server once it has imported what it preloads
DIR_PREFIX = "privdom-dbt-"
# what the server imports before it accepts anything: dbt's command line, and the adapters of privdom's
# targets that are installed (an adapter that is not installed is simply not preloaded)
DEFAULT_PRELOAD = ("dbt.cli.main", "dbt.adapters.duckdb", "dbt.adapters.duckdb.impl")
DEFAULT_ENTRY = "dbt.cli.main:cli"

# The client: stdlib only, run as `python -I -S client.py` (isolated, no site: ~20 ms) by a /bin/sh wrapper named
# `dbt` (a shebang line would break on an interpreter path with spaces or over the kernel's length limit).
# Placeholders are filled in by WarmServer._write_client. Protocol: the client sends an 8-byte length and one
# JSON request (argv, env, cwd) with its fds 0, 1, 2; the server's child answers "pid <n>\n" once it has taken
# them over, then "exit <status>\n" when done.
_WRAPPER = '''#!/bin/sh
exec {python} -I -S {client} "$@"
'''
_CLIENT = r'''import json, os, select, signal, socket, sys
SOCKET = {socket!r}
FALLBACK = {fallback!r}
child = None
pidfd = None
pending = []
def forward(signum, frame):
    # SIGINT / SIGTERM go to the command's process; one that comes before it is known is sent once it is
    if child is None:
        pending.append(signum)
        return
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)  # never another process that got a reused pid
        else:
            os.kill(child, signum)
    except OSError:  # gone already
        pass
signal.signal(signal.SIGINT, forward)
signal.signal(signal.SIGTERM, forward)
try:
    # Linux: killed when the process that started it dies (a `kill -9` of privdom run, the OOM killer); its
    # command then dies with it (_die_with_client). An orphaned client kept dbt writing the warehouse for
    # seconds after the run was gone, and the next run found it locked by "another process" (crash review).
    # (No check of the parent's pid after it: privdom is pid 1 in a container started without an init.)
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except Exception:
    pass
def fallback(why):
    if pending:
        sys.exit(130)
    if FALLBACK is None:
        sys.stderr.write("privdom warm dbt: " + why + "\n")
        sys.exit(2)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execv(FALLBACK, [FALLBACK] + sys.argv[1:])
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(SOCKET)
    request = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
    header = len(request).to_bytes(8, "big")
    sent = socket.send_fds(s, [header], [0, 1, 2])
    s.sendall(header[sent:] + request)
except OSError as exc:
    fallback("server not reachable (%s)" % exc)
buffer = b""
def readline():
    # short timeouts, not one blocking read: a signal that comes just before a blocking recv() would only be
    # handled (forwarded) after it returns, i.e. never
    global buffer
    s.settimeout(0.2)
    while b"\n" not in buffer:
        try:
            chunk = s.recv(256)
        except socket.timeout:
            continue
        except OSError:
            return ""
        if not chunk:
            return ""
        buffer += chunk
    line, _, buffer = buffer.partition(b"\n")
    return line.decode()
line = readline()
if not line.startswith("pid "):
    fallback("server did not start the command")
pid = int(line.split()[1])
try:  # before `child` is set: a signal handled in between waits in `pending`, then goes through the pidfd
    pidfd = os.pidfd_open(pid)
except (AttributeError, OSError):
    pidfd = None
child = pid
for signum in pending:
    forward(signum, None)
line = readline()
if not line.startswith("exit "):
    sys.stderr.write("privdom warm dbt: the command's process ended without an exit status\n")
    sys.exit(1)
if pidfd is not None:
    # as a process's own end is: what it holds (a DuckDB file's lock) is released when the caller goes on
    while not select.select([pidfd], [], [], 0.2)[0]:
        pass
sys.exit(int(line.split()[1]))
'''


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _recv_exact(conn: socket.socket, n: int, fds: list[int]) -> bytes:
    data = b""
    while len(data) < n:
        chunk, new_fds, _, _ = socket.recv_fds(conn, n - len(data), 8)
        fds.extend(new_fds)
        if not chunk:
            raise EOFError("client closed the connection")
        data += chunk
    return data


def _die_with_client(conn: socket.socket) -> None:
    try:
        while conn.recv(64):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _run_child(conn: socket.socket, entry) -> None:  # noqa: ANN001 - a callable
    """In the forked child: take over the client's fds, environment and directory, run `entry`, report."""
    import atexit
    import json

    status = 1
    try:
        fds: list[int] = []
        size = int.from_bytes(_recv_exact(conn, 8, fds), "big")
        request = json.loads(_recv_exact(conn, size, fds))
        if len(fds) != 3:
            raise RuntimeError(f"expected 3 file descriptors, got {len(fds)}")
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        # line-buffered text streams on the new fds: the log lines reach the reader as they are written
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8")  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()  # TZ from the client's environment
        os.chdir(request["cwd"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        conn.sendall(f"pid {os.getpid()}\n".encode())
        # the client is the process dagster-dbt started (and may kill): when it is gone, so is the command, as
        # a dbt process killed directly would be. It keeps the connection open until this process has ended.
        threading.Thread(target=_die_with_client, args=(conn,), daemon=True, name="privdom-warm-watch").start()
        sys.argv = ["dbt", *request["argv"]]
        try:
            result = entry()
            status = result if isinstance(result, int) else 0
        except SystemExit as exc:
            code = exc.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
        except BaseException:  # noqa: BLE001 - reported like an uncaught exception, with status 1
            import traceback

            traceback.print_exc()
            status = 1
        atexit._run_exitfuncs()  # what an interpreter exit would run, without the module teardown
    finally:
        try:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        except Exception:  # noqa: BLE001, S110 - the reader may be gone
            pass
        try:
            conn.sendall(f"exit {status}\n".encode())
        except OSError:
            pass
        os._exit(0)


def _resolve(entry: str):  # noqa: ANN202 - a callable
    module, _, attr = entry.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def serve(directory: str, entry: str = DEFAULT_ENTRY, preload: tuple[str, ...] = DEFAULT_PRELOAD,
          parent: int | None = None) -> None:
    """The server's main loop (runs in its own process, started by WarmServer.start)."""
    import gc

    # the process that started us, as it told us: one that died before this line is still noticed
    parent = os.getppid() if parent is None else parent
    path = os.path.join(directory, SOCKET_NAME)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)  # bound before the imports: a client that comes early waits in the backlog
    server.listen(16)
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    target = _resolve(entry)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel; they report themselves
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    gc.collect()
    gc.freeze()  # what is imported now stays shared with the children (fewer copied pages)
    Path(directory, READY_NAME).touch()
    server.settimeout(1.0)
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the process that started us is gone (killed): clean up after it
                import shutil

                shutil.rmtree(directory, ignore_errors=True)
                os._exit(0)
            continue
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # dbt's own subprocesses are waited for normally
            _run_child(conn, target)
        conn.close()


def _alive(pid_file: Path) -> bool | None:
    """Whether the process a pid file names is alive; None without a readable pid."""
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) <= 0:
        return None
    return pid_alive(int(text))


def sweep_stale(parent: Path, *, grace_seconds: float = 3600.0) -> list[Path]:
    """Remove the directories of servers that are gone: a server killed with its whole process group (SIGKILL)
    cannot remove its own. A directory goes when it is older than `grace_seconds` and neither the process that
    started the server (its owner, whose dbt commands use the client in it) nor the server is alive (or it has
    no pid files)."""
    import shutil

    removed = []
    for d in parent.glob(DIR_PREFIX + "*"):
        try:
            if not d.is_dir() or d.stat().st_uid != os.getuid():
                continue
            if time.time() - d.stat().st_mtime < grace_seconds:
                # young: a server being started has no pid files for a moment, and a process in another pid
                # namespace sharing /tmp (a container, `unshare -p`) sees live servers' pids as gone
                continue
            owner, server = _alive(d / OWNER_NAME), _alive(d / PID_NAME)
            if owner or server:
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        except OSError:
            continue
    return removed


class WarmServer:
    """A warm server for this process's dbt commands: ``start()``, hand ``executable`` to dagster-dbt,
    ``stop()`` (or use it as a context manager)."""

    def __init__(self, fallback: str | os.PathLike[str] | None, *, entry: str = DEFAULT_ENTRY,
                 preload: tuple[str, ...] = DEFAULT_PRELOAD) -> None:
        self.fallback = None if fallback is None else str(fallback)
        self.entry = entry
        self.preload = preload
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.process: subprocess.Popen | None = None

    @property
    def directory(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("the warm server is not started")
        return Path(self._tmp.name)

    @property
    def executable(self) -> Path:
        """The client script: use it where the dbt executable is expected."""
        return self.directory / CLIENT_NAME

    def _write_client(self) -> None:
        import shlex

        code = self.directory / CLIENT_CODE_NAME
        code.write_text(_CLIENT.format(socket=str(self.directory / SOCKET_NAME), fallback=self.fallback))
        self.executable.write_text(_WRAPPER.format(python=shlex.quote(sys.executable), client=shlex.quote(str(code))))
        self.executable.chmod(0o700)
        if not os.access(self.executable, os.X_OK):  # e.g. a temporary directory mounted noexec
            raise OSError(f"{self.executable} cannot be executed here")

    def start(self) -> WarmServer:
        if self.process is not None:
            raise RuntimeError("the warm server is already started")
        # a short path: a Unix socket's path is limited to ~107 bytes
        parent = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
        sweep_stale(Path(parent))
        self._tmp = tempfile.TemporaryDirectory(prefix=DIR_PREFIX, dir=parent)
        (self.directory / OWNER_NAME).write_text(str(os.getpid()))
        self._write_client()
        # started with -c, not -m: under -m, click would name the program "python -m orchestration.warm"
        # in dbt's usage messages instead of "dbt"
        # -P: the directory it is started from is not put on sys.path (the children chdir to dbt's)
        args = [sys.executable, "-P", "-c", "from orchestration.warm import main; main()", str(self.directory),
                "--entry", self.entry, "--preload", ",".join(self.preload), "--parent", str(os.getpid())]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (self.directory / PID_NAME).write_text(str(self.process.pid))
        return self

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Wait until the server has imported what it preloads (tests; the run does not wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.directory / READY_NAME).exists():
                return True
            if self.process is not None and self.process.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> WarmServer:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m orchestration.warm", description="warm fork server for dbt")
    parser.add_argument("directory")
    parser.add_argument("--entry", default=DEFAULT_ENTRY)
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD))
    parser.add_argument("--parent", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.directory, args.entry, tuple(p for p in args.preload.split(",") if p), args.parent)


if __name__ == "__main__":
    main()
