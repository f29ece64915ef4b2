"""`privdom dbt`: dbt as the pipeline runs it (settings as --vars, the warehouse lock, its own target path)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from orchestration import dbt as dbt_runner
from orchestration.locking import warehouse_lock

PRIVDOM = Path(sys.executable).with_name("privdom")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PRIVDOM_HOME", "PRIVDOM_DBT_TARGET")}


def _privdom(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PRIVDOM), "--data-dir", str(data_dir), "dbt", *args], capture_output=True, text=True,
                          env=_env(), timeout=300)


def _data_dir(tmp_path: Path, settings: str = "") -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    duckdb.connect(str(data_dir / "warehouse.duckdb")).close()
    (data_dir / "privdom.toml").write_text(settings, encoding="utf-8")
    return data_dir


def test_dbt_gets_the_settings_as_vars_with_the_callers_laid_over_them(tmp_path, dbt_manifest):
    data_dir = _data_dir(tmp_path, "activation_window_days = 3\nretention_end_days = 120\n")
    # the parse lock keeps the pipeline's parses (other test files' runs, beside this one) off the manifest
    # while the command runs: privdom dbt itself never takes it
    with dbt_runner._parse_lock():
        pipeline_manifest = dbt_runner.MANIFEST_PATH.stat().st_mtime_ns
        result = _privdom(data_dir, "compile", "--inline",
                          "select {{ var('activation_window_days') }} as a, {{ var('retention_end_days') }} as r, "
                          "{{ var('privdom_test_all_rows', false) }} as t",
                          "--vars", "{activation_window_days: 5, privdom_test_all_rows: true}")
        manifest_after = dbt_runner.MANIFEST_PATH.stat().st_mtime_ns
    assert result.returncode == 0, result.stdout + result.stderr
    # 120 from privdom.toml, 5 from the caller's --vars over the file's 3, and the caller's own var
    assert "select 5 as a, 120 as r, True as t" in result.stdout
    # dbt's log (dbt show writes the rows it shows there) is the data directory's, not the checkout's, which
    # every data directory shares
    assert "select 5 as a" in (data_dir / "logs" / "dbt" / "dbt.log").read_text(encoding="utf-8")
    # dbt's outputs went to target/manual: the manifest the Dagster definitions read is the pipeline's
    assert manifest_after == pipeline_manifest
    assert (dbt_runner.DBT_PROJECT_DIR / "target" / "manual" / "manifest.json").exists()


def test_refusals(tmp_path):
    empty = tmp_path / "empty"
    result = _privdom(empty, "test")
    assert result.returncode == 2 and "no warehouse at" in result.stderr and "privdom run" in result.stderr
    assert not (empty / "warehouse.duckdb").exists()  # dbt-duckdb would have created an empty one
    # naming the pipeline's own target changes nothing (a review: it skipped the check and created the file)
    for target in (("--target", "duckdb"), ("-t", "duckdb"), ("--target=duckdb",)):
        result = _privdom(empty, "compile", *target)
        assert result.returncode == 2 and "no warehouse at" in result.stderr, (target, result.stderr)
        assert not (empty / "warehouse.duckdb").exists()
    version = _privdom(empty, "--version")  # dbt's own options reach dbt, and need no warehouse
    assert version.returncode == 0 and "installed" in version.stdout, version.stdout + version.stderr
    data_dir = _data_dir(tmp_path)
    for args, message in [((), "needs a dbt command"), (("test", "--vars", "[1]"), "must be a YAML mapping"),
                          (("test", "--vars"), "--vars needs a value"), (("clean",), "pipeline's manifest")]:
        result = _privdom(data_dir, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_dbt_waits_for_the_warehouse_lock(tmp_path, dbt_manifest):
    data_dir = _data_dir(tmp_path)
    with warehouse_lock(data_dir, what="a test holding the warehouse"):
        proc = subprocess.Popen([str(PRIVDOM), "--data-dir", str(data_dir), "dbt", "compile", "--inline", "select 1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        try:
            time.sleep(3)
            assert proc.poll() is None  # waiting
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "a test holding the warehouse" in err  # it said who it waits for


def test_building_under_other_window_vars_makes_the_pipeline_rebuild_from_raw(tmp_path, dbt_manifest):
    """`privdom dbt run --vars '{activation_window_days: 5}'` builds incremental models under another window than
    the settings; the pipeline's record still matched the settings, so its next run would have kept those rows.
    Such a command marks every step's record incomplete (the next run rebuilds from raw); other vars, and
    commands that build nothing, leave it."""
    data_dir = _data_dir(tmp_path)
    with duckdb.connect(str(data_dir / "warehouse.duckdb")) as con:
        con.execute("create schema raw; create table raw.dbt_incremental_state (step varchar primary key, "
                    "fingerprint varchar not null, recorded_at timestamptz not null, tested_through_file_id bigint, "
                    "tested_built_at timestamp); insert into raw.dbt_incremental_state values "
                    "('dbt_staging', 'f1', now(), 7, null), ('dbt_models', 'f1', now(), null, null)")

    def recorded():
        with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
            return con.execute("select step, fingerprint, tested_through_file_id from raw.dbt_incremental_state order by 1").fetchall()

    for args in (("run", "--select", "no_such_model", "--vars", "{privdom_test_all_rows: true}"),
                 ("compile", "--select", "no_such_model", "--vars", "{activation_window_days: 5}"),
                 ("run", "--select", "no_such_model", "--vars", "{activation_window_days: 30}")):  # the setting's own value
        _privdom(data_dir, *args)
        assert recorded() == [("dbt_models", "f1", None), ("dbt_staging", "f1", 7)], args
    result = _privdom(data_dir, "run", "--select", "no_such_model", "--vars", "{activation_window_days: 5}")
    assert "sets activation_window_days otherwise than the settings" in result.stderr
    assert recorded() == [("dbt_models", dbt_runner.INCOMPLETE, None), ("dbt_staging", dbt_runner.INCOMPLETE, 7)]


def test_output_that_is_no_terminal_gets_no_colour_and_a_data_dir_after_dbt_is_refused(tmp_path, monkeypatch, capsys):
    """dbt colours its output whatever it goes to: escape codes in `privdom dbt test | less`, a file, a CI log."""
    from orchestration.cli import main

    data_dir = _data_dir(tmp_path)
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: ran.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.delenv("NO_COLOR", raising=False)
    # pytest's captured stdout is no terminal
    assert main(["--data-dir", str(data_dir), "dbt", "ls"]) == 0
    assert "--no-use-colors" in ran[-1]
    # the caller's own choice is kept
    assert main(["--data-dir", str(data_dir), "dbt", "ls", "--use-colors"]) == 0
    assert "--no-use-colors" not in ran[-1] and "--use-colors" in ran[-1]
    # on a terminal: colour, unless NO_COLOR is set
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["--data-dir", str(data_dir), "dbt", "ls"]) == 0
    assert "--no-use-colors" not in ran[-1]
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["--data-dir", str(data_dir), "dbt", "ls"]) == 0
    assert "--no-use-colors" in ran[-1]

    # --data-dir after `dbt` was passed to dbt ("No such option"), and the command ran on ./data's warehouse
    ran.clear()
    capsys.readouterr()
    for args in (["--data-dir", str(data_dir)], [f"--data-dir={data_dir}"]):
        assert main(["dbt", "test", *args]) == 2
        assert "give --data-dir before `dbt`" in capsys.readouterr().err
    assert ran == []


def test_a_build_of_models_the_pipeline_would_rebuild_from_raw_is_warned_of(tmp_path, dbt_manifest):
    """After an upgrade that changed the incremental models' SQL (or an unload, a changed setting), `privdom
    dbt build` before `privdom run` failed with dbt's "schemas on this incremental model are out of sync" and
    advice about on_schema_change that does not apply (the upgrade review): it now says what the pipeline will
    do and what to run. A step whose record matches the fingerprint, or --full-refresh, says nothing."""
    from orchestration.settings import load_settings

    data_dir = _data_dir(tmp_path)
    current = dbt_runner.incremental_fingerprint(load_settings(data_dir))
    with duckdb.connect(str(data_dir / "warehouse.duckdb")) as con:
        con.execute("create schema raw; create table raw.dbt_incremental_state (step varchar primary key, "
                    "fingerprint varchar not null, recorded_at timestamptz not null, tested_through_file_id bigint, "
                    "tested_built_at timestamp); insert into raw.dbt_incremental_state values "
                    "('dbt_staging', ?, now(), 7, null), ('dbt_identity_inputs', 'an older privdom', now(), null, null)",
                    [current])
    warned = _privdom(data_dir, "run", "--select", "no_such_model").stderr
    assert ("privdom dbt: warning: the pipeline's next run rebuilds the incremental models of dbt_identity_inputs "
            "and the steps after it from raw (the SQL of the incremental models, or the vars their rows depend on, "
            "changed since the last build); `privdom run` first, or add --full-refresh") in warned, warned
    assert "warning" not in _privdom(data_dir, "run", "--select", "no_such_model", "--full-refresh").stderr
    assert "warning" not in _privdom(data_dir, "compile", "--select", "no_such_model").stderr
    with duckdb.connect(str(data_dir / "warehouse.duckdb")) as con:
        con.execute("update raw.dbt_incremental_state set fingerprint = ?", [current])
    assert "warning" not in _privdom(data_dir, "run", "--select", "no_such_model").stderr


def test_a_dbt_command_that_builds_models_holds_back_exports_until_the_pipeline_tests_them(tmp_path, dbt_manifest):
    """Its tests, if it ran any, reported to the terminal, not to Dagster: the members' gate of the last run still
    passed, and exports, syncs or the BI copy materialized alone would have published what it built (the UI
    review's finding, by this path). A command that builds nothing leaves no mark."""
    data_dir = _data_dir(tmp_path)

    def marked():
        with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
            return dbt_runner.untested_builds(con)

    _privdom(data_dir, "compile", "--select", "no_such_model")
    assert marked() == []
    assert "wait until" not in _privdom(data_dir, "run", "--help").stderr  # dbt's help builds nothing
    assert marked() == []
    result = _privdom(data_dir, "run", "--select", "no_such_model")
    assert "exports, syncs and the BI copy wait until the pipeline's next whole build" in result.stderr
    waiting = marked()
    assert [w.split(" ")[0] for w in waiting] == sorted(dbt_runner.STEP_ORDER)
    assert all("rebuilt by `privdom dbt run` from " in w and "`privdom run` or the job whole_graph" in w for w in waiting)
