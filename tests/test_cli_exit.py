"""`privdom`'s exit (orchestration.cli.run): Python's teardown is skipped, what it would do that matters is not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, body: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run cli.run() in a fresh interpreter with main() replaced by `body` (the function `fake_main`)."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import atexit, sys, threading, time, weakref
            from pathlib import Path
            from orchestration import cli
            out = Path(sys.argv[1])

            class Resource:
                pass

            kept = Resource()
            weakref.finalize(kept, lambda: (out / "finalizer").write_text("ran"))  # as TemporaryDirectory does
            atexit.register(lambda: (out / "atexit").write_text("ran"))
            # run by Python's own exit only (threading's shutdown), never by the exit that skips the teardown
            threading._register_atexit(lambda: (out / "python_exit").write_text("ran"))
            """
        )
        + textwrap.dedent(body)
        + "\ncli.main = fake_main\ncli.run()\n",
        encoding="utf-8",
    )
    # buffered output, as `privdom` has unless told otherwise: an unflushed buffer must show as lost output
    env = {k: v for k, v in os.environ.items() if k not in ("PRIVDOM_PYTHON_EXIT", "PYTHONUNBUFFERED")}
    env.update({"PYTHONPATH": str(REPO), **(env_extra or {})})
    return subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)


def test_exit_code_output_and_exit_handlers_survive(tmp_path):
    done = _run(
        tmp_path,
        """
        def fake_main(argv=None):
            sys.stdout.write("summary without a newline")  # buffered: only a flush writes it
            sys.stderr.write("a warning")
            return 3
        """,
    )
    assert done.returncode == 3
    assert done.stdout == "summary without a newline"
    assert done.stderr == "a warning"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "finalizer").read_text() == "ran"
    assert not (tmp_path / "python_exit").exists()  # the teardown was skipped


def test_what_c_code_printed_is_flushed_too(tmp_path):
    done = _run(
        tmp_path,
        """
        import ctypes

        def fake_main(argv=None):
            ctypes.CDLL(None).printf(b"printed by C")  # C's stdout buffer, full-buffered on a pipe
            return 0
        """,
    )
    assert done.returncode == 0
    assert done.stdout == "printed by C"
    assert not (tmp_path / "python_exit").exists()


def test_a_daemon_thread_does_not_hold_the_exit_back(tmp_path):
    done = _run(
        tmp_path,
        """
        def fake_main(argv=None):
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
            return 0
        """,
    )
    assert done.returncode == 0
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "python_exit").exists()


def test_no_stdout_is_no_error(tmp_path):
    done = _run(
        tmp_path,
        """
        def fake_main(argv=None):
            sys.stdout = None
            return 0
        """,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "python_exit").exists()


def test_a_running_thread_is_waited_for(tmp_path):
    # a non-daemon thread still working when main() returns: os._exit would cut it off, so Python's exit is taken
    done = _run(
        tmp_path,
        """
        def work():
            time.sleep(0.5)
            (out / "thread").write_text("finished")

        def fake_main(argv=None):
            threading.Thread(target=work, daemon=False).start()
            return 0
        """,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "thread").read_text() == "finished"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "python_exit").read_text() == "ran"


def test_python_exit_on_request(tmp_path):
    done = _run(
        tmp_path,
        """
        def fake_main(argv=None):
            print("ok")
            return 0
        """,
        {"PRIVDOM_PYTHON_EXIT": "1"},
    )
    assert done.returncode == 0
    assert done.stdout == "ok\n"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "python_exit").read_text() == "ran"


def test_exception_out_of_main_is_printed_by_python(tmp_path):
    done = _run(
        tmp_path,
        """
        def fake_main(argv=None):
            raise RuntimeError("boom")
        """,
    )
    assert done.returncode == 1
    assert "RuntimeError: boom" in done.stderr
    assert (tmp_path / "atexit").read_text() == "ran"


def test_console_script_is_run():
    # the installed `privdom` and `python -m orchestration.cli` both go through run()
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'privdom = "orchestration.cli:run"' in text
    assert (REPO / "orchestration" / "cli.py").read_text(encoding="utf-8").rstrip().endswith("run()")


def test_what_privdom_writes_is_not_readable_by_other_users(tmp_path):
    """The data directory holds personal data; the privacy review found every file 0644 and every folder 0755.
    `privdom` takes the 'other' permissions away (owner and group keep what the user's umask gives)."""
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "--data-dir", str(data), "generate", "--customers", "20", "--days", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    made = [data, *data.rglob("*")]
    assert len(made) > 3
    for path in made:
        assert path.stat().st_mode & 0o007 == 0, (path, oct(path.stat().st_mode))
    assert any(p.is_file() and p.stat().st_mode & 0o070 == 0o040 for p in made)  # the group keeps its read
    # a tool outside the group that reads the BI copy or the exports: $PRIVDOM_UMASK is taken as it is
    shared = tmp_path / "shared"
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "--data-dir", str(shared), "generate", "--customers", "20", "--days", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o077),
        env={**os.environ, "PRIVDOM_UMASK": "022"},
    )
    assert done.returncode == 0, done.stderr
    assert all(p.stat().st_mode & 0o004 for p in [shared, *shared.rglob("*")])
    refused = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "--data-dir", str(shared), "generate", "--customers", "20", "--days", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PRIVDOM_UMASK": "rw-r--r--"},
    )
    assert refused.returncode == 2 and "PRIVDOM_UMASK" in refused.stderr and "Traceback" not in refused.stderr


def test_a_ui_listening_beyond_this_machine_is_warned_of():
    """Dagster's UI has no login (privacy review: `privdom ui --host 0.0.0.0` said nothing)."""
    from orchestration.cli import ui_exposure_warning

    for local in ("127.0.0.1", "localhost", "::1", "127.0.1.1"):
        assert ui_exposure_warning(local) is None, local
    for exposed in ("0.0.0.0", "::", "10.1.2.3"):
        assert "has no login" in ui_exposure_warning(exposed), exposed


def test_output_read_by_a_command_that_stopped_reading_ends_quietly(tmp_path):
    """`privdom quarantine | head`: no "privdom: [Errno 32] Broken pipe" (or a traceback), and the status a shell
    gives a command a closed pipe ended (141), whether the output is buffered or not."""
    env = {k: v for k, v in os.environ.items() if k not in ("PRIVDOM_PYTHON_EXIT", "PYTHONUNBUFFERED", "PRIVDOM_HOME")}
    data_dir = tmp_path / "data"  # no warehouse: `segments` lists the shipped definitions
    for extra in ({}, {"PYTHONUNBUFFERED": "1"}):
        read, write = os.pipe()
        os.close(read)  # nobody reads: the first write fails
        try:
            done = subprocess.run([sys.executable, "-m", "orchestration.cli", "--data-dir", str(data_dir), "segments"],
                                  stdout=write, stderr=subprocess.PIPE, text=True, env={**env, **extra}, timeout=120,
                                  cwd=REPO)
        finally:
            os.close(write)
        assert done.returncode == 141, (extra, done.stderr)
        assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr, (extra, done.stderr)


def test_a_ctrl_c_during_the_run_exits_130_and_says_so(settings, monkeypatch, capsys):
    """Dagster takes a Ctrl-C as the failure of the step it stopped (its own SIGINT handler in place, no
    KeyboardInterrupt out of it): `privdom run` printed a failed run's summary and exited 1, like a failed check."""
    import argparse
    import signal
    import time
    import types

    from orchestration import cli, runner

    def interrupted_run(settings, *, verbose=False, full_refresh=False, stopped=True):
        previous = signal.signal(signal.SIGINT, lambda *_: None)  # as Dagster's capture_interrupts does
        try:
            if stopped:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
        finally:
            signal.signal(signal.SIGINT, previous)
        return types.SimpleNamespace(success=False, describe=lambda: "privdom run x: FAILED")

    monkeypatch.setattr(runner, "run_pipeline", interrupted_run)
    args = argparse.Namespace(verbose=False, full_refresh=False)
    assert cli.cmd_run(args, settings) == 130
    printed = capsys.readouterr()
    assert "FAILED" in printed.out and "interrupted" in printed.err
    # a run that failed on its own is still 1
    monkeypatch.setattr(runner, "run_pipeline", lambda s, **kw: interrupted_run(s, stopped=False, **kw))
    assert cli.cmd_run(args, settings) == 1
    assert "interrupted" not in capsys.readouterr().err


def test_every_command_says_what_it_does_in_its_help():
    """`privdom COMMAND --help` explains the command, not only its options (generate, run and demo printed
    their usage and options alone)."""
    import argparse

    from orchestration.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        assert parser.description and len(parser.description.split()) >= 12, name


def test_a_sigterm_during_the_run_exits_143_and_says_so(settings, monkeypatch, capsys):
    """docker stop, systemd, Kubernetes and `timeout` send SIGTERM. While a run executes, Dagster handles it with
    its SIGINT handler (capture_interrupts maps SIGTERM to it), so the run stops as on a Ctrl-C: `privdom run`
    exited 1 with a failed run's summary and no word of the signal, as after a failed check (signal review)."""
    import argparse
    import signal
    import time
    import types

    from orchestration import cli, runner

    def terminated_run(settings, *, verbose=False, full_refresh=False):
        captured = lambda *_: None  # noqa: E731 - as Dagster's capture_interrupts: one handler for both
        previous = {s: signal.signal(s, captured) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return types.SimpleNamespace(success=False, describe=lambda: "privdom run x: FAILED")

    monkeypatch.setattr(runner, "run_pipeline", terminated_run)
    assert cli.cmd_run(argparse.Namespace(verbose=False, full_refresh=False), settings) == 143
    printed = capsys.readouterr()
    assert "FAILED" in printed.out and "interrupted (SIGTERM)" in printed.err


def test_a_sigterm_before_the_run_executes_exits_143_with_its_cleanup(settings, monkeypatch, capsys):
    """Before Dagster's run begins (the run lock's wait, dbt parse, the definitions) SIGTERM had no handler: the
    process ended at once, printing nothing, leaving the warm dbt server's folder and the parse folder behind."""
    import argparse
    import signal
    import time

    from orchestration import cli, runner

    cleaned = []

    def run_before_dagster(settings, *, verbose=False, full_refresh=False):
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            raise AssertionError("a SIGTERM now would end privdom at once, without its cleanup")
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        finally:
            cleaned.append(True)  # as the warm servers' and the parse's context managers do
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(runner, "run_pipeline", run_before_dagster)
    previous = signal.getsignal(signal.SIGTERM)
    assert cli.cmd_run(argparse.Namespace(verbose=False, full_refresh=False), settings) == 143
    assert cleaned and "interrupted (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == previous  # put back


def test_a_closed_terminal_stops_the_run_as_ctrl_c_does(settings, monkeypatch, capsys):
    """SIGHUP (the terminal closed, an ssh session dropped) killed `privdom run` on the spot: its Dagster run stayed
    "started" holding the pool `warehouse`, and the UI's and the schedule's runs stayed queued behind it until the
    next `privdom run`. Now it goes to whatever handles SIGINT (Dagster's during the run), and exits 129."""
    import argparse
    import signal
    import time
    import types

    from orchestration import cli, runner

    def hung_up_run(settings, *, verbose=False, full_refresh=False):
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
            raise AssertionError("a SIGHUP now would kill privdom on the spot")
        stopped = []
        previous = signal.signal(signal.SIGINT, lambda *_: stopped.append(True))  # as Dagster's capture_interrupts
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
        finally:
            signal.signal(signal.SIGINT, previous)
        assert stopped, "the SIGHUP did not reach the run's interrupt handler"
        return types.SimpleNamespace(success=False, describe=lambda: "privdom run x: FAILED")

    monkeypatch.setattr(runner, "run_pipeline", hung_up_run)
    # as in a terminal's session, whatever this test runs under (CI started with nohup ignores SIGHUP)
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        assert cli.cmd_run(argparse.Namespace(verbose=False, full_refresh=False), settings) == 129
        assert "interrupted (SIGHUP" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # put back

        # under nohup SIGHUP stays ignored: the run goes on when the terminal closes, as it did
        seen = []

        def run_under_nohup(settings, *, verbose=False, full_refresh=False):
            seen.append(signal.getsignal(signal.SIGHUP))
            return types.SimpleNamespace(success=True, describe=lambda: "privdom run x: succeeded")

        monkeypatch.setattr(runner, "run_pipeline", run_under_nohup)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        assert cli.cmd_run(argparse.Namespace(verbose=False, full_refresh=False), settings) == 0
        assert seen == [signal.SIG_IGN]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_the_ui_started_in_the_background_of_a_script_stops_on_sigterm(settings, monkeypatch):
    """A script's `privdom ui &` starts it with SIGINT ignored; Dagster's dev server handles SIGTERM as it handles
    SIGINT, so `kill PID` was ignored and only SIGKILL stopped the UI. The dev server must start with neither
    ignored."""
    import argparse
    import signal

    from orchestration import cli
    from orchestration import dbt as dbt_runner

    seen = {}

    def fake_exec(path, argv):
        seen.update({s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)})
        raise SystemExit(0)

    monkeypatch.setattr(dbt_runner, "parse", lambda settings: None)
    monkeypatch.setattr(os, "execv", fake_exec)
    monkeypatch.setattr(os, "execvp", fake_exec)
    monkeypatch.chdir(os.getcwd())  # cmd_ui changes directory
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cli.cmd_ui(argparse.Namespace(host="127.0.0.1", port=3999), settings)
        except SystemExit:
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert seen and all(handler is not signal.SIG_IGN for handler in seen.values()), seen


def test_sigterm_stays_handled_after_dagster_s_run_when_sigint_came_ignored():
    """`privdom run &` in a script starts with SIGINT ignored; Dagster's interrupt handling sets SIGTERM to
    SIGINT's handler when its run ends, so a SIGTERM during the summary (its wait for the lock included) was
    ignored (diff review). The handler from before the run is put back."""
    import signal

    from dagster._utils.interrupts import capture_interrupts

    from orchestration.runner import _sigterm_kept

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # as privdom run sets it (cli._termination_as_interrupt)
        with _sigterm_kept():
            with capture_interrupts():  # as execute_in_process does
                pass
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # what Dagster leaves
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
