"""DuckDB's memory limit (setting duckdb_memory_limit): every privdom connection and dbt's use it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from orchestration import dbt as dbt_runner
from orchestration.settings import DBT_PROJECT_DIR, SettingsError, load_settings
from orchestration.warehouse import connect


def _limit(con) -> str:
    return con.execute("select current_setting('memory_limit')").fetchone()[0]


def test_the_default_limit_is_2_5gb_and_reaches_connections(tmp_path):
    settings = load_settings(tmp_path)
    assert settings.duckdb_memory_limit == "2.5GB"
    con = connect(tmp_path / "w.duckdb", memory_limit=settings.duckdb_memory_limit)
    try:
        assert _limit(con) == "2.3 GiB"  # DuckDB shows 2.5 GB (10^9) in GiB
    finally:
        con.close()
    assert settings.dbt_env()["PRIVDOM_DBT_DUCKDB_MEMORY_LIMIT"] == "2.5GB"


def test_an_empty_limit_leaves_duckdbs_default(tmp_path):
    (tmp_path / "privdom.toml").write_text('duckdb_memory_limit = ""\n', encoding="utf-8")
    settings = load_settings(tmp_path)
    assert settings.duckdb_memory_limit == ""
    assert settings.dbt_env()["PRIVDOM_DBT_DUCKDB_MEMORY_LIMIT"] == "80%"  # DuckDB's own default, spelled out


@pytest.mark.parametrize("value", ["lots", "3", "-1GB", "3 apples"])
def test_a_limit_that_is_not_a_size_is_refused_with_the_settings_name(tmp_path, value):
    (tmp_path / "privdom.toml").write_text(f'duckdb_memory_limit = "{value}"\n', encoding="utf-8")
    with pytest.raises(SettingsError, match="duckdb_memory_limit"):
        load_settings(tmp_path)


def test_dbt_runs_with_the_limit(tmp_path):
    settings = load_settings(tmp_path, duckdb_memory_limit="1GiB")
    env = {**os.environ, **settings.dbt_env()}
    result = subprocess.run(
        [str(dbt_runner.dbt_executable()), "show", "--quiet", "--output", "json", "--inline",
         "select current_setting('memory_limit') as memory_limit",
         "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR), "--target", "duckdb",
         # its own target and log folders: the project's manifest and partial-parse state stay untouched
         "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
         *dbt_runner.dbt_vars_arg(settings)],
        cwd=DBT_PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shown = json.loads(result.stdout[result.stdout.index("{"):])
    assert shown["show"] == [{"memory_limit": "1.0 GiB"}]


def test_a_share_of_the_limit_is_in_bytes_in_duckdbs_units():
    import duckdb

    from orchestration.settings import share_of_memory_limit

    # DuckDB: GB = 10^9 bytes, GiB = 2^30; two instances that run at once get shares adding up to the setting
    assert share_of_memory_limit("2.5GB", 0.25) == "625000000B"
    assert share_of_memory_limit("2.5GB", 0.75) == "1875000000B"
    assert share_of_memory_limit("3 GiB", 0.5) == f"{3 * 2**30 // 2}B"
    assert share_of_memory_limit("512mb", 1) == "512000000B"
    assert share_of_memory_limit("", 0.5) == "" and share_of_memory_limit(None, 0.5) is None
    with pytest.raises(ValueError):
        share_of_memory_limit("lots", 0.5)
    with pytest.raises(ValueError):
        share_of_memory_limit("1GB", 0)
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{share_of_memory_limit('2.5GB', 0.25)}'")
    assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "596.0 MiB"


@pytest.mark.parametrize("text, words", [
    ("[destination.crm]\ntype = \"webhook\"\n", "unknown table [destination]"),
    ("[exprts]\nformats = [\"csv\"]\n", "unknown table [exprts]"),
    ("[segment.vip]\nversion = 1\n", "unknown table [segment]"),
    ("[privdom]\nidentity_max_degree = 5\n[segments.vip]\nversion = 1\n", "everything belongs under [privdom]"),
    ("identity_max_degree = 2.7\n", "'identity_max_degree'"),
    ("retention_start_days = 100\n", "retention_start_days (100, from "),
    ("retention_start_days = 100\n", "must be below retention_end_days (90, from the default)"),
    ("activation_window_days = 1000000000\n", "must be at most 36500 days"),
    ("referral_window_days = 36501\n", "must be at most 36500 days"),
    ("partitions_start_date = \"20240101\"\n", "must be a date written YYYY-MM-DD"),
    ("partitions_start_date = \"2024-W01-1\"\n", "must be a date written YYYY-MM-DD"),
    ("duckdb_memory_limit = \"1KB\"\n", "must be at least 256MB"),
    ("demo_dirty_rate = 0.6\n", "must be below 0.5"),
    ("demo_customers = 0\n", "must be 1 or more"),
    # ranges' edges, from the mutation review
    # a share is a fraction: 5 meant as "5 %" would let every bad delivery through
    ("max_quarantine_share = 5\n", "must be between 0 and 1"),
    ("max_quarantine_share = -0.1\n", "must be between 0 and 1"),
    # a boolean is no share: `true` would be 1.0, and no delivery, however bad, would ever block
    ("max_quarantine_share = true\n", "must be a number"),
    ("activation_window_days = -30\n", "must not be negative"),
    ("identity_max_degree = -1\n", "must not be negative"),
    # a boolean is no count: `true` would be identity_max_degree 1 and mark nearly every identifier shared
    ("identity_max_degree = true\n", "must be a whole number"),
    # a window that starts where it ends holds no instant: nobody could be retained
    ("retention_start_days = 90\nretention_end_days = 90\n", "must be below retention_end_days"),
    ("demo_dirty_rate = 0.5\n", "must be below 0.5"),
    ("triangle_baseline_month = \"2024-13\"\n", "must look like 2024-03"),
    ("triangle_baseline_month = \"2024-00\"\n", "must look like 2024-03"),
])
def test_a_settings_file_that_would_be_misread_is_refused(tmp_path, text, words):
    """A misspelled table ([destination], [exprts], [segment]) would be ignored, so a user's sync or segment
    would silently not exist; a fractional count would be cut; a retention window that ends before it starts
    would make nobody retained. A window of 1e9 days overflowed in dbt after ingestion had written, a date
    Python reads but Dagster's partitions do not ended in a traceback naming no setting, and a memory limit
    of 1KB created the warehouse and then failed: all refused before anything is written."""
    (tmp_path / "privdom.toml").write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path)
    assert words in str(info.value)


def test_the_known_tables_and_whole_numbers_load(tmp_path):
    (tmp_path / "privdom.toml").write_text(
        "identity_max_degree = 30.0\nretention_start_days = 20\n[exports]\nformats = [\"csv\"]\n", encoding="utf-8")
    settings = load_settings(tmp_path)
    assert (settings.identity_max_degree, settings.retention_start_days) == (30, 20)
    assert settings.sources == {"exports": {"formats": ["csv"]}}


def test_a_data_directory_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    """`privdom --data-dir FILE run` (or generate, or ui) ended in a FileExistsError traceback."""
    from orchestration.cli import main

    afile = tmp_path / "notes.txt"
    afile.write_text("x", encoding="utf-8")
    with pytest.raises(SettingsError, match="is a file, not a directory"):
        load_settings(afile)
    for argv in (["--data-dir", str(afile), "run"], ["generate", "--data-dir", str(afile)], ["--data-dir", str(afile), "ui"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == f"privdom: data directory {afile} is a file, not a directory (--data-dir or PRIVDOM_HOME)\n"


def test_a_variable_that_looks_like_a_setting_and_is_not_one_is_named_with_the_one_meant(tmp_path, capsys, monkeypatch):
    """A misspelled PRIVDOM_ variable is ignored: the default stays in force. `privdom` says so (once per
    command, on stderr) and names the variable meant; names far from any it reads (a destination's secret) pass."""
    from orchestration.cli import main
    from orchestration.settings import misspelled_environment

    environ = {
        "PRIVDOM_ACTIVATION_WINDOW_DAY": "7",  # the setting is activation_window_days
        "privdom_home": str(tmp_path),  # variables are case-sensitive
        "PRIVDOM_SPARK_HSOT": "spark.example",  # read by dbt's profiles.yml
        "PRIVDOM_ACTIVATION_WINDOW_DAYS": "30", "PRIVDOM_GX_WARM": "0", "PRIVDOM_CRM_SECRET": "s3cret",
        "PRIVDOM_WECOM_CORP_SECRET": "s", "PATH": "/usr/bin",
    }
    assert misspelled_environment(environ) == [
        "$PRIVDOM_ACTIVATION_WINDOW_DAY is not a variable privdom reads, and is ignored; did you mean "
        "$PRIVDOM_ACTIVATION_WINDOW_DAYS?",
        "$PRIVDOM_SPARK_HSOT is not a variable privdom reads, and is ignored; did you mean $PRIVDOM_SPARK_HOST?",
        "$privdom_home is not a variable privdom reads, and is ignored; did you mean $PRIVDOM_HOME?",
    ]
    monkeypatch.setenv("PRIVDOM_REPURCHASE_WINDOW_DAY", "60")
    afile = tmp_path / "notes.txt"
    afile.write_text("x", encoding="utf-8")
    assert main(["--data-dir", str(afile), "run"]) == 2  # refused after the warning, before anything runs
    assert capsys.readouterr().err.splitlines()[0] == (
        "privdom: warning: $PRIVDOM_REPURCHASE_WINDOW_DAY is not a variable privdom reads, and is ignored; "
        "did you mean $PRIVDOM_REPURCHASE_WINDOW_DAYS?"
    )
    assert load_settings(tmp_path).repurchase_window_days == 90  # the default, as the warning says


def test_secrets_and_names_beyond_a_typo_pass_without_a_warning(tmp_path):
    """From the diff review: a secret close to a known name (PRIVDOM_SPARK_PASSWORD to PRIVDOM_SPARK_PORT,
    PRIVDOM_DEMO_SECRET to PRIVDOM_DEMO_SEED) was reported as a misspelling. A warning needs a typo's distance (two
    letters), and a variable a destination names for its secret is one privdom reads."""
    from orchestration.settings import misspelled_environment, referenced_environment

    quiet = {name: "x" for name in ("PRIVDOM_SPARK_PASSWORD", "PRIVDOM_SPARK_SECRET", "PRIVDOM_SPARK_CLUSTER",
                                    "PRIVDOM_DEMO_SECRET", "PRIVDOM_HOME_URL", "PRIVDOM_WECOM_CORP_SECRET")}
    assert misspelled_environment(quiet) == []
    (tmp_path / "privdom.toml").write_text(
        '[destinations.crm]\ntype = "webhook"\nurl = "https://crm.example/hook"\nsecret_env = "PRIVDOM_DEMO_SEEDS"\n'
        'segments = ["one_time_buyers"]\n', encoding="utf-8")
    referenced = referenced_environment(load_settings(tmp_path))
    assert referenced == ["PRIVDOM_DEMO_SEEDS"]
    assert misspelled_environment({"PRIVDOM_DEMO_SEEDS": "s"}) != []  # one letter from demo_seed's variable
    assert misspelled_environment({"PRIVDOM_DEMO_SEEDS": "s"}, referenced=referenced) == []


def test_data_directories_that_cannot_work_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """From the install-and-paths review: each of these ended in a traceback (or a stray database beside the
    data directory), now exit 2 with one line."""
    import orchestration.settings as settings_module
    from orchestration.cli import main

    monkeypatch.delenv("PRIVDOM_HOME", raising=False)
    afile = tmp_path / "notes.txt"
    afile.write_text("x", encoding="utf-8")
    # its parent is a file: it cannot be created (NotADirectoryError from deep in the run before)
    assert main(["--data-dir", str(afile / "sub"), "generate"]) == 2
    err = capsys.readouterr().err
    assert "cannot be created or written" in err and "Traceback" not in err
    # Dagster's SQLite storage cuts its URL at '?': its run tables went to a file beside the data directory
    with pytest.raises(SettingsError, match="has a '\\?' in its path"):
        load_settings(tmp_path / "brand A?x")
    assert main(["--data-dir", str(tmp_path / "brand A?x"), "run"]) == 2
    assert "'?'" in capsys.readouterr().err and not (tmp_path / "brand A").exists()
    # SQLAlchemy decodes %41 in that URL as A: another directory's instance, or none
    with pytest.raises(SettingsError, match="has a '%' in its path"):
        load_settings(tmp_path / "brand%41")
    # dbt-duckdb reads the warehouse's path as a URL: a '#' cut it, and every run failed in dbt_staging
    with pytest.raises(SettingsError, match="has a '#' in its path"):
        load_settings(tmp_path / "brand #2")
    # DuckDB opens `acme\old/warehouse.duckdb` as `acme/old/warehouse.duckdb`: another data directory's warehouse
    (tmp_path / "acme" / "old").mkdir(parents=True)
    with pytest.raises(SettingsError, match="has a backslash in its path"):
        load_settings(tmp_path / "acme\\old")
    assert main(["--data-dir", str(tmp_path / "acme\\old"), "run"]) == 2
    assert "backslash" in capsys.readouterr().err and not (tmp_path / "acme" / "old" / "warehouse.duckdb").exists()
    # installed without its source checkout (a wheel, `pip install .`): no dbt project to run
    monkeypatch.setattr(settings_module, "DBT_PROJECT_DIR", tmp_path / "site-packages" / "dbt_project")
    for command in ("run", "demo", "dbt"):
        assert main(["--data-dir", str(tmp_path / "data"), command]) == 2, command
        assert "pip install -e ." in capsys.readouterr().err
    assert not (tmp_path / "data" / "landing").exists()  # demo refused before generating


def test_values_on_the_edge_of_a_settings_range_load(tmp_path):
    (tmp_path / "privdom.toml").write_text(
        "max_quarantine_share = 1\nreferral_window_days = 36500\nretention_start_days = 89\nretention_end_days = 90\n"
        "demo_dirty_rate = 0.49\ntriangle_baseline_month = \"2024-12\"\nidentity_max_degree = 0\n", encoding="utf-8")
    s = load_settings(tmp_path)
    assert (s.max_quarantine_share, s.referral_window_days, s.retention_start_days, s.retention_end_days,
            s.demo_dirty_rate, s.triangle_baseline_month, s.identity_max_degree) == (1.0, 36500, 89, 90, 0.49, "2024-12", 0)


def test_the_environment_overrides_the_settings_file_and_block_list_values_are_lower_cased(tmp_path, monkeypatch):
    """Settings module docstring / SPEC §6: environment variables win over privdom.toml; placeholders are
    compared lower-cased (SPEC §3), so a block-list value written `TEST-USER` matches `test-user`."""
    (tmp_path / "privdom.toml").write_text(
        "identity_max_degree = 5\nplaceholder_block_list = [\"TEST-USER\", \" Guest \"]\n", encoding="utf-8")
    monkeypatch.setenv("PRIVDOM_IDENTITY_MAX_DEGREE", "7")
    s = load_settings(tmp_path)
    assert s.identity_max_degree == 7
    assert s.placeholder_values[-2:] == ("test-user", "guest")


def test_a_damaged_warehouse_or_a_read_only_data_directory_is_one_line(tmp_path, capsys, monkeypatch):
    """From the runbook review: garbage in the warehouse's first bytes (or a data directory on a read-only
    mount) ended `privdom segments`, `prune`, `dbt` and `run` in a traceback."""
    from orchestration.cli import main

    monkeypatch.delenv("PRIVDOM_HOME", raising=False)
    (tmp_path / "warehouse.duckdb").write_bytes(b"GARBAGE" * 4096)
    assert main(["--data-dir", str(tmp_path), "segments"]) == 1
    err = capsys.readouterr().err
    assert "not a valid DuckDB database file" in err and "restore warehouse.duckdb" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_dagster_storage_out_of_disk_is_one_line():
    """From the runbook review: a full disk under dagster/ ended `privdom run` in a 127-line SQLAlchemy traceback
    ending in `sqlite3.OperationalError: disk I/O error`, which never said where."""
    import sqlite3

    import sqlalchemy.exc

    from orchestration.cli import _file_error

    full = sqlalchemy.exc.OperationalError("INSERT INTO event_logs ...", {}, sqlite3.OperationalError("disk I/O error"))
    text = _file_error(full)
    assert text.startswith("Dagster's run storage (the SQLite files under the data directory's dagster/) could not "
                           "be written: disk I/O error") and "free space" in text
    assert _file_error(sqlite3.OperationalError("database or disk is full")) is not None
    try:  # wrapped again, as Dagster does
        try:
            raise full
        except sqlalchemy.exc.OperationalError as inner:
            raise RuntimeError("could not store the event") from inner
    except RuntimeError as wrapped:
        assert "disk I/O error" in _file_error(wrapped)
    # any other SQL error keeps its traceback
    assert _file_error(sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: runs"))) is None
    assert _file_error(ValueError("x")) is None


def test_an_empty_data_dir_or_two_different_ones_are_refused(tmp_path, capsys, monkeypatch):
    """From the CLI review: `--data-dir ""` (an unset shell variable: `--data-dir "$BRAND_DIR"`) fell back to
    $PRIVDOM_HOME or ./data, and `privdom --data-dir A segments --data-dir B` used B, both silently."""
    from orchestration.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PRIVDOM_HOME", raising=False)
    for argv in (["--data-dir", "", "segments"], ["segments", "--data-dir", " "]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "--data-dir: is empty" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path / "A"), "segments", "--data-dir", str(tmp_path / "B")]) == 2
    assert "--data-dir is given twice" in capsys.readouterr().err
    # the same directory twice, however written, is no contradiction
    assert main(["--data-dir", str(tmp_path / "A"), "segments", "--data-dir", "A/."]) == 0
    assert not (tmp_path / "data").exists()
