"""The warm dbt server (orchestration/warm.py): what a command sees and gives back through the client is what
it would see and give back as a process of its own; interrupts reach it; without a server, the real
executable runs; the server does not outlive its parent. The entry points here are small functions in a
module of the test's own, so that each behaviour is checked on its own; the last tests run dbt itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestration import dbt as dbt_runner
from orchestration.warm import WarmServer

ENTRIES = '''
import os, sys, time

def echo():
    """argv, cwd, one env var and a line of stdin on stdout; a line on stderr; exit status from argv."""
    line = sys.stdin.readline().strip()
    print("argv=" + "|".join(sys.argv[1:]))
    print("cwd=" + os.getcwd())
    print("env=" + os.environ.get("WARM_TEST_VALUE", "<unset>"))
    print("stdin=" + line)
    print("to stderr", file=sys.stderr)
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 0)

def sleeper():
    try:
        print("started" + (" %d" % os.getpid() if sys.argv[1:] == ["with-pid"] else ""), flush=True)
        for _ in range(1200):  # short sleeps: a signal that comes just before a long sleep() waits for its end
            time.sleep(0.05)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    print("not interrupted")

def crash():
    print("crashing", flush=True)
    os.kill(os.getpid(), 9)

def pid():
    print(os.getpid())
'''


@pytest.fixture()
def entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "warm_test_entries.py").write_text(textwrap.dedent(ENTRIES))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return "warm_test_entries"


def _server(entry: str, fallback: str | None = None) -> WarmServer:
    server = WarmServer(fallback, entry=entry, preload=()).start()
    assert server.wait_ready(), "the warm server did not start"
    return server


def test_a_command_sees_its_argv_env_cwd_and_stdio_and_returns_its_status(
        entries: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "somewhere"
    work.mkdir()
    monkeypatch.setenv("WARM_TEST_VALUE", "the server's")  # the server's own environment is not the command's
    with _server(f"{entries}:echo") as server:
        monkeypatch.delenv("WARM_TEST_VALUE")
        env = {**os.environ, "WARM_TEST_VALUE": "from the client"}
        result = subprocess.run([str(server.executable), "3", "two words", "x"], input="hello\n", capture_output=True,
                                text=True, cwd=work, env=env, timeout=30)
        assert result.returncode == 3
        assert result.stdout.splitlines() == ["argv=3|two words|x", f"cwd={work}", "env=from the client", "stdin=hello"]
        assert result.stderr == "to stderr\n"
        # a second command of the same server: its own environment, nothing left from the first
        result = subprocess.run([str(server.executable)], input="", capture_output=True, text=True, cwd=tmp_path,
                                env={k: v for k, v in os.environ.items() if k != "WARM_TEST_VALUE"}, timeout=30)
        assert result.returncode == 0
        assert "env=<unset>" in result.stdout.splitlines()


def test_each_command_runs_in_a_process_of_its_own(entries: str) -> None:
    with _server(f"{entries}:pid") as server:
        pids = {subprocess.run([str(server.executable)], capture_output=True, text=True, timeout=30).stdout.strip()
                for _ in range(3)}
        assert len(pids) == 3 and str(server.process.pid) not in pids


def test_sigint_to_the_client_interrupts_the_command(entries: str) -> None:
    # dagster-dbt stops dbt with SIGINT on the process it started: the client
    with _server(f"{entries}:sleeper") as server:
        client = subprocess.Popen([str(server.executable)], stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout.readline().strip() == "started"
            client.send_signal(signal.SIGINT)
            assert client.wait(timeout=30) == 130
            assert client.stdout.read().strip() == "interrupted"
        finally:
            client.kill()
            client.wait()


def test_a_command_killed_without_a_status_fails(entries: str) -> None:
    with _server(f"{entries}:crash") as server:
        result = subprocess.run([str(server.executable)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        assert "crashing" in result.stdout
        assert "ended without an exit status" in result.stderr


def test_without_a_server_the_client_runs_the_real_executable(entries: str, tmp_path: Path) -> None:
    real = tmp_path / "real-dbt"
    real.write_text("#!/bin/sh\necho \"real $*\"\nexit 7\n")
    real.chmod(0o755)
    with _server(f"{entries}:echo", fallback=str(real)) as server:
        server.process.kill()  # a server that crashed: its socket is still there, nobody listens
        server.process.wait()
        result = subprocess.run([str(server.executable), "a", "b"], capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stdout) == (7, "real a b\n")


def test_a_killed_client_takes_its_command_with_it(entries: str) -> None:
    # dagster-dbt may kill the process it started; a dbt started directly would die with it
    with _server(f"{entries}:sleeper") as server:
        client = subprocess.Popen([str(server.executable), "with-pid"], stdout=subprocess.PIPE, text=True)
        child = int(client.stdout.readline().split()[1])
        client.kill()
        client.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(child, signal.SIGKILL)
        pytest.fail("the command outlived its killed client")


def test_two_commands_at_once(entries: str) -> None:
    with _server(f"{entries}:sleeper") as server:
        clients = [subprocess.Popen([str(server.executable)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            for c in clients:
                assert c.stdout.readline().strip() == "started"
            for c in clients:
                c.send_signal(signal.SIGINT)
            assert [c.wait(timeout=30) for c in clients] == [130, 130]
        finally:
            for c in clients:
                c.kill()
                c.wait()


def test_the_server_stops_when_its_parent_is_gone(entries: str, tmp_path: Path) -> None:
    # a parent that starts a server and dies without stopping it
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "from orchestration.warm import WarmServer\n"
              f"s = WarmServer(None, entry={entries + ':echo'!r}, preload=()).start()\n"
              "assert s.wait_ready()\n"
              "print(s.process.pid, s.directory, flush=True)\n"
              "import os; os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid, directory = out.stdout.split()
    pid = int(pid)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            assert not Path(directory).exists()  # its socket and client are removed with it
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("the warm server outlived its parent")


def test_directories_of_dead_servers_are_swept(entries: str, tmp_path: Path) -> None:
    from orchestration import warm

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / (warm.DIR_PREFIX + "dead")  # a server killed with its process group left this
    gone.mkdir()
    (gone / warm.PID_NAME).write_text(str(dead.pid))
    (gone / warm.SOCKET_NAME).write_text("")
    alive = tmp_path / (warm.DIR_PREFIX + "alive")
    alive.mkdir()
    (alive / warm.PID_NAME).write_text(str(os.getpid()))
    orphaned = tmp_path / (warm.DIR_PREFIX + "orphaned")  # its server died, its run goes on (cold)
    orphaned.mkdir()
    (orphaned / warm.PID_NAME).write_text(str(dead.pid))
    (orphaned / warm.OWNER_NAME).write_text(str(os.getpid()))
    starting = tmp_path / (warm.DIR_PREFIX + "starting")  # no pid file yet, and new
    starting.mkdir()
    old = tmp_path / (warm.DIR_PREFIX + "old")  # no pid file, an hour old
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    other = tmp_path / "privdom-ingest-x"
    other.mkdir()
    # a live server seen from another pid namespace (a container sharing /tmp, `unshare -p`): its pids look
    # gone, and a sweep there removed the client of a run going on, which then failed (found this session)
    young = tmp_path / (warm.DIR_PREFIX + "young")
    young.mkdir()
    (young / warm.PID_NAME).write_text(str(dead.pid))
    (young / warm.OWNER_NAME).write_text(str(dead.pid))
    for d in (gone, alive, orphaned):  # pid files decide for directories past the grace time
        os.utime(d, (time.time() - 7200, time.time() - 7200))
    assert sorted(p.name for p in warm.sweep_stale(tmp_path)) == [gone.name, old.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, orphaned.name, starting.name, young.name, other.name, "warm_test_entries.py"])


def test_dbt_through_the_warm_server_is_dbt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing: dbt's own command line behind the client, its exit statuses and output included."""
    monkeypatch.delenv("PRIVDOM_DBT_WARM", raising=False)
    with dbt_runner.warm_dbt() as client:
        assert client is not None and dbt_runner.command_executable() == client
        ok = subprocess.run([str(client), "--version"], capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0 and "Core:" in ok.stdout
        bad = subprocess.run([str(client), "no-such-command"], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2
        assert "Usage: dbt [OPTIONS]" in bad.stderr and "No such command 'no-such-command'" in bad.stderr
    assert dbt_runner.command_executable() == dbt_runner.dbt_executable()


def test_warm_server_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVDOM_DBT_WARM", "0")
    with dbt_runner.warm_dbt() as client:
        assert client is None
        assert dbt_runner.command_executable() == dbt_runner.dbt_executable()


def test_a_command_does_not_outlive_the_process_that_started_its_client(entries: str, tmp_path: Path) -> None:
    """`kill -9` of privdom run (or the OOM killer) left its dbt client and the command running for seconds,
    writing the warehouse, and the next run failed on a lock held by "another process" (crash review). The
    client dies with the process that started it, and the command with its client."""
    script = (f"import os, subprocess, sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "from orchestration.warm import WarmServer\n"
              f"s = WarmServer(None, entry={entries + ':sleeper'!r}, preload=()).start()\n"
              "assert s.wait_ready()\n"
              "c = subprocess.Popen([str(s.executable), 'with-pid'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)\n"
              "child = c.stdout.readline().split()[1]\n"
              "print(c.pid, child, flush=True)\n"
              "os.kill(os.getpid(), 9)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    client, child = (int(p) for p in parent.stdout.readline().split())
    parent.wait(timeout=30)
    assert parent.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    alive = {client, child}
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
        time.sleep(0.05)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"outlived the process that started them: {sorted(alive)} (client {client}, command {child})"


def test_a_command_runs_when_privdom_is_process_1(entries: str, tmp_path: Path) -> None:
    """In a container started without an init, privdom is pid 1: a client that took a parent pid of 1 for a
    dead starter exited at once, and every dbt command of the run failed without a word (diff review). Run in
    a pid namespace of its own where `unshare` may make one (skipped elsewhere)."""
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rpf", "--mount-proc", "true"], capture_output=True).returncode:
        pytest.skip("no unprivileged pid namespace here")
    script = tmp_path / "as_pid_1.py"
    script.write_text(
        f"import os, subprocess, sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "from orchestration.warm import WarmServer\n"
        "assert os.getpid() == 1\n"
        f"s = WarmServer(None, entry={entries + ':echo'!r}, preload=()).start()\n"
        "assert s.wait_ready()\n"
        "r = subprocess.run([str(s.executable), '3'], input='hi\\n', capture_output=True, text=True, timeout=60)\n"
        "print(r.returncode, r.stdout.splitlines()[:1], flush=True)\n"
        "s.stop()\n"
    )
    out = subprocess.run([unshare, "-rpf", "--mount-proc", sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3 ['argv=3']", out.stdout


def test_the_dbt_resource_runs_dbt_through_the_warm_client_while_its_config_names_the_installed_dbt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's path is new each run (a temporary directory of its own): as the resource's configured value
    it made every run's job snapshot a new one in Dagster's runs.db (long-horizon review). The config names the
    installed dbt; each command runs through whatever `command_executable()` is at that moment."""
    import dagster as dg
    from dagster_dbt import DbtCliResource

    from orchestration.defs.resources import PrivdomDbtCliResource, resources

    monkeypatch.delenv("PRIVDOM_DBT_WARM", raising=False)
    used: list[str] = []
    monkeypatch.setattr(DbtCliResource, "cli", lambda self, args, **kwargs: used.append(self.dbt_executable))
    with dbt_runner.warm_dbt() as client:
        assert client is not None
        defs = dg.Definitions.merge(resources())
        resource = defs.resources["dbt"]
        assert isinstance(resource, PrivdomDbtCliResource)
        assert resource.dbt_executable == str(dbt_runner.dbt_executable())
        resource.cli(["build"])
    resource.cli(["build"])  # the server stopped: the installed dbt
    assert used == [str(client), str(dbt_runner.dbt_executable())]
