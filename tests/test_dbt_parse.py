"""`privdom run` skips `dbt parse` when nothing it reads changed (orchestration/dbt.py: parse_if_changed).

dbt itself is replaced by a fake that writes a manifest and counts its calls, on a copy of the dbt project,
so the tests check the decision, not dbt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from orchestration import dbt as dbt_runner
from orchestration.defs import dbt as defs_dbt  # before the fixture below fakes subprocess.run
from orchestration.settings import DBT_PROJECT_DIR, load_settings


@pytest.fixture
def project(tmp_path, monkeypatch):
    copy = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, copy, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", ".user.yml"))
    monkeypatch.setattr(dbt_runner, "DBT_PROJECT_DIR", copy)
    monkeypatch.setattr(dbt_runner, "MANIFEST_PATH", copy / "target" / "manifest.json")
    monkeypatch.setattr(dbt_runner, "PARSE_STAMP_PATH", copy / "target" / "privdom_parse_fingerprint.txt")
    calls: list[list[str]] = []

    def fake_dbt(cmd, **kwargs):
        assert cmd[1] == "parse"
        calls.append(cmd)
        out = Path(cmd[cmd.index("--target-path") + 1])  # where dbt writes its outputs
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text("{}", encoding="utf-8")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(dbt_runner.subprocess, "run", fake_dbt)
    monkeypatch.delenv("PRIVDOM_SPARK_HOST", raising=False)
    saved = dict(os.environ)  # parse exports the profile's env vars into this process
    yield copy, calls
    os.environ.clear()
    os.environ.update(saved)


def test_parses_once_then_only_when_something_it_reads_changes(project, tmp_path, monkeypatch):
    copy, calls = project
    settings = load_settings(tmp_path / "data")
    assert dbt_runner.parse_if_changed(settings) is True
    assert dbt_runner.parse_if_changed(settings) is False
    assert len(calls) == 1

    # a model edited
    model = copy / "models" / "marts" / "fct_orders.sql"
    model.write_text(model.read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8")
    assert dbt_runner.parse_if_changed(settings) is True
    assert dbt_runner.parse_if_changed(settings) is False

    # a new file (a generic test, a macro) counts too
    (copy / "macros" / "new_macro.sql").write_text("{% macro m() %}1{% endmacro %}\n", encoding="utf-8")
    assert dbt_runner.parse_if_changed(settings) is True

    # another data directory: other profile env vars (the warehouse path)
    other = load_settings(tmp_path / "other")
    assert dbt_runner.parse_if_changed(other) is True
    assert dbt_runner.parse_if_changed(settings) is True  # and back

    # an environment variable profiles.yml reads
    monkeypatch.setenv("PRIVDOM_SPARK_HOST", "cluster.example")
    assert dbt_runner.parse_if_changed(settings) is True
    assert dbt_runner.parse_if_changed(settings) is False

    # a manifest written since by another dbt command (`dbt build` by hand, other vars) is not ours, even
    # one of the same size with the old mtime
    manifest = copy / "target" / "manifest.json"
    st = manifest.stat()
    manifest.write_text("[]", encoding="utf-8")
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dbt_runner.parse_if_changed(settings) is True
    assert dbt_runner.parse_if_changed(settings) is False

    # other vars (a setting passed to dbt), another DBT_* variable, another dbt version
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "privdom.toml").write_text('placeholder_block_list = ["test"]\n', encoding="utf-8")
    blocked = load_settings(tmp_path / "data")
    assert dbt_runner.parse_if_changed(blocked) is True
    assert dbt_runner.parse_if_changed(blocked) is False
    monkeypatch.setenv("DBT_PARTIAL_PARSE", "false")
    assert dbt_runner.parse_if_changed(blocked) is True
    import importlib.metadata

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "9.9.9" if d == "dbt-adapters" else real_version(d))
    assert dbt_runner.parse_if_changed(blocked) is True
    assert dbt_runner.parse_if_changed(blocked) is False
    settings = blocked

    # dbt's outputs are not inputs: a new file under target/ or logs/ changes nothing
    (copy / "target" / "run_results.json").write_text("{}", encoding="utf-8")
    (copy / "logs").mkdir(exist_ok=True)
    (copy / "logs" / "dbt.log").write_text("x", encoding="utf-8")
    assert dbt_runner.parse_if_changed(settings) is False
    assert len(calls) == 10

    # the switches of how dbt and validation are started are not read by dbt
    monkeypatch.setenv("PRIVDOM_DBT_WARM", "0")
    monkeypatch.setenv("PRIVDOM_GX_WARM", "0")
    assert dbt_runner.parse_if_changed(settings) is False
    assert len(calls) == 10


def test_parses_when_the_manifest_is_missing_or_the_last_parse_failed(project, tmp_path, monkeypatch):
    copy, calls = project
    settings = load_settings(tmp_path / "data")
    assert dbt_runner.parse_if_changed(settings) is True
    (copy / "target" / "manifest.json").unlink()
    assert dbt_runner.parse_if_changed(settings) is True
    assert len(calls) == 2

    # a failed parse leaves no fingerprint behind: the next run parses again
    def failing(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 2, "", "Compilation Error in model x")

    monkeypatch.setattr(dbt_runner.subprocess, "run", failing)
    model = copy / "models" / "marts" / "fct_orders.sql"
    model.write_text(model.read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="dbt parse failed"):
        dbt_runner.parse_if_changed(settings)
    assert not dbt_runner.PARSE_STAMP_PATH.exists()
    with pytest.raises(RuntimeError, match="dbt parse failed"):
        dbt_runner.parse_if_changed(settings)
    assert len(calls) == 4


def test_old_dbt_target_directories_are_pruned_per_step(tmp_path, monkeypatch):
    # dagster-dbt leaves target/<step>-<run id>-<random>/ behind for every invocation; the newest few per step stay
    monkeypatch.setattr(dbt_runner, "DBT_PROJECT_DIR", tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    names = [f"dbt_models-{i:07x}-abcdef{i % 10}" for i in range(14)] + ["dbt_staging-0000001-1234567"]
    for i, name in enumerate(names):
        d = target / name
        (d / "compiled").mkdir(parents=True)
        (d / "run_results.json").write_text("{}", encoding="utf-8")
        os.utime(d, ns=(i * 10**9, i * 10**9))
    keep_anyway = ["dbt_models-notours", "dbt_models-0000001-1234567-x"]  # not named as dagster-dbt names them
    for name in keep_anyway:
        (target / name).mkdir()
    (target / "manifest.json").write_text("{}", encoding="utf-8")

    assert dbt_runner.prune_invocation_dirs("dbt_models", keep=10) == 4
    left = sorted(p.name for p in target.iterdir())
    assert left == sorted(names[4:] + keep_anyway + ["manifest.json"])  # the 4 oldest models dirs went
    assert dbt_runner.prune_invocation_dirs("dbt_models", keep=10) == 0
    assert dbt_runner.prune_invocation_dirs("dbt_identity_inputs") == 0


def test_under_dg_the_definitions_parse_only_when_something_a_parse_reads_changed(project, tmp_path, monkeypatch):
    # `privdom ui`, `dg launch` and every run the UI starts import the definitions with DAGSTER_IS_DEV_CLI set:
    # they parsed every time (7-10 s), and their manifest made every other data directory's next run parse again
    copy, calls = project
    monkeypatch.setenv("PRIVDOM_HOME", str(tmp_path / "data"))
    monkeypatch.setattr(defs_dbt, "using_dagster_dev", lambda: True)
    defs_dbt.prepare_manifest()
    defs_dbt.prepare_manifest()
    assert len(calls) == 1
    model = copy / "models" / "marts" / "fct_orders.sql"  # an edit still shows up
    model.write_text(model.read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8")
    defs_dbt.prepare_manifest()
    assert len(calls) == 2


def test_a_build_in_progress_is_not_pruned_by_another_data_directorys_steps(tmp_path, monkeypatch):
    # target/ is shared by every data directory: a long build of one brand (no run_results.json yet, its folder's
    # mtime set when dbt finished parsing) must survive ten shorter builds of other brands ending meanwhile
    monkeypatch.setattr(dbt_runner, "DBT_PROJECT_DIR", tmp_path)
    target = tmp_path / "target"
    running = target / "dbt_models-aaaaaaa-bbbbbbb"
    (running / "compiled").mkdir(parents=True)
    now = time.time()
    os.utime(running, (now - 600, now - 600))
    killed = target / "dbt_models-ccccccc-ddddddd"  # a killed build's, two days old
    killed.mkdir()
    os.utime(killed, (now - 2 * 86400, now - 2 * 86400))
    for i in range(10):
        d = target / f"dbt_models-{i:07x}-1234567"
        d.mkdir()
        (d / "run_results.json").write_text("{}", encoding="utf-8")
        os.utime(d, (now - 60 + i, now - 60 + i))
    assert dbt_runner.prune_invocation_dirs("dbt_models") == 1
    assert running.is_dir() and (running / "compiled").is_dir()
    assert not killed.exists()


def test_a_dbt_step_is_seeded_with_its_own_data_directorys_partial_parse_file(tmp_path, monkeypatch):
    # target/partial_parse.msgpack is the last parse's, of whichever data directory: a step seeded with another's
    # (other vars, another warehouse path) parsed the whole project again
    project = tmp_path / "project"
    (project / "target").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: x\n", encoding="utf-8")
    monkeypatch.setattr(dbt_runner, "DBT_PROJECT_DIR", project)
    brands = {b: load_settings(tmp_path / b, activation_window_days=days) for b, days in (("a", 14), ("b", 30))}
    def use(settings):  # the profile env a run of that data directory sets (apply_dbt_environment), undone after
        for key, value in settings.dbt_env().items():
            monkeypatch.setenv(key, value)

    for brand, settings in brands.items():  # a parses, then b: the shared file is b's
        use(settings)
        (project / "target" / "partial_parse.msgpack").write_bytes(f"parsed for {brand}".encode())
        dbt_runner._keep_partial_parse(dbt_runner.parse_fingerprint(settings))
    for brand, settings in brands.items():
        use(settings)
        step = project / "target" / f"dbt_models-0000000-{brand}{brand}{brand}{brand}{brand}{brand}{brand}"
        assert dbt_runner.seed_partial_parse(settings, step)
        assert (step / "partial_parse.msgpack").read_bytes() == f"parsed for {brand}".encode()
    other = load_settings(tmp_path / "c")
    use(other)
    assert not dbt_runner.seed_partial_parse(other, project / "target" / "dbt_models-0000000-ccccccc")


def test_the_incremental_fingerprint_follows_what_rows_depend_on_not_the_test_macros(project, tmp_path):
    """A new privdom whose test macros changed must not rebuild the incremental models from raw; one whose
    model macros changed must (orchestration/dbt.py: incremental_fingerprint)."""
    copy, _ = project
    settings = load_settings(tmp_path / "data")
    before = dbt_runner.incremental_fingerprint(settings)
    with open(copy / "macros" / "data_tests" / "privdom_rows_to_test.sql", "a", encoding="utf-8") as f:
        f.write("\n{# a new comment #}\n")
    assert dbt_runner.incremental_fingerprint(settings) == before
    with open(copy / "macros" / "privdom_incremental.sql", "a", encoding="utf-8") as f:
        f.write("\n{# a new comment #}\n")
    assert dbt_runner.incremental_fingerprint(settings) != before


def test_the_incremental_fingerprint_follows_the_vars_incremental_rows_depend_on(tmp_path):
    """The purchase windows reach int_customers__purchases, which is incremental: changing one must rebuild it
    (a different fingerprint); the referral window and the triangle's baseline month reach only tables that are
    rebuilt on every run, so changing them must not rebuild anything from raw."""
    base = dbt_runner.incremental_fingerprint(load_settings(tmp_path / "data"))
    for setting, value in (("activation_window_days", 31), ("retention_start_days", 29), ("retention_end_days", 91),
                           ("repurchase_window_days", 61), ("placeholder_block_list", ("n/a-x",))):
        assert dbt_runner.incremental_fingerprint(load_settings(tmp_path / "data", **{setting: value})) != base, setting
    for setting, value in (("referral_window_days", 8), ("triangle_baseline_month", "2024-01")):
        assert dbt_runner.incremental_fingerprint(load_settings(tmp_path / "data", **{setting: value})) == base, setting


def test_every_model_that_can_be_incremental_is_in_the_incremental_fingerprint():
    """A model built incrementally keeps rows of earlier builds: its SQL must be in the fingerprint, or a new
    version of it would be mixed with rows its old version wrote (orchestration/dbt.py)."""
    models = DBT_PROJECT_DIR / "models"
    incremental = {p.relative_to(models).as_posix() for p in models.rglob("*.sql")
                   if "privdom_incremental_materialization()" in p.read_text(encoding="utf-8")}
    listed = {f"intermediate/{name}" for name in dbt_runner.INCREMENTAL_INTERMEDIATE_MODELS}
    staging = {p for p in incremental if p.startswith("staging/")}  # every staging model is in it (a glob)
    assert incremental - staging <= listed, sorted(incremental - staging - listed)
    assert {"intermediate/int_orders__customers.sql", "intermediate/int_customers__purchases.sql"} <= incremental
    # and every model they read: an incremental model keeps rows computed from it for whatever it does not
    # compute again, so its SQL changing must rebuild them too
    import re

    fingerprinted = listed | {f"intermediate/{name}" for name in dbt_runner.FINGERPRINTED_TABLE_MODELS}
    by_name = {p.stem: p.relative_to(models).as_posix() for p in models.rglob("*.sql")}
    for model in sorted(incremental - staging):
        for ref in re.findall(r"ref\(\s*'([a-z0-9_]+)'\s*\)", (models / model).read_text(encoding="utf-8")):
            read = by_name[ref]
            assert read.startswith("staging/") or read in fingerprinted, (model, read)


def test_the_raw_contents_staging_compares_are_the_contracts_columns():
    """macros/raw_contents.sql lists, per source, the columns staging's deduplication and the event_id_conflicts
    test compare: every contract column, in contract order (a column left out would merge two versions that
    differ only in it)."""
    import jinja2

    from orchestration.contract import CONTRACTS

    class Returned(Exception):
        pass

    def dbt_return(value):
        raise Returned(value)

    macro = (DBT_PROJECT_DIR / "macros" / "raw_contents.sql").read_text(encoding="utf-8")
    env = jinja2.Environment(extensions=["jinja2.ext.do"])
    env.globals["return"] = dbt_return
    for source, c in CONTRACTS.items():
        with pytest.raises(Returned) as returned:
            env.from_string(macro + "{{ privdom_raw_contents(" + repr(source) + ") }}").render()
        assert returned.value.args[0] == list(c.column_names), source


def test_a_parse_replaces_the_manifest_whole_and_keeps_partial_parsing(project, tmp_path, monkeypatch):
    """dbt writes manifest.json in place, and other processes (another data directory's run, `privdom ui`) read
    it without the parse lock: the install-and-paths review read a half-written manifest 172 times in 5,033
    reads. dbt now writes to a folder of its own, given the last partial-parse file, and its outputs are renamed
    into target/."""
    copy, calls = project
    target = copy / "target"
    target.mkdir()
    (target / ".parse-999999").mkdir()  # a killed parse's folder: removed by the next parse, which holds the lock
    (target / "manifest.json").write_text('{"old": true}', encoding="utf-8")
    (target / "partial_parse.msgpack").write_bytes(b"last parse")
    seen = {}

    def dbt_writing_slowly(cmd, **kwargs):
        out = Path(cmd[cmd.index("--target-path") + 1])
        assert out.parent == target and out != target
        seen["partial parse given"] = (out / "partial_parse.msgpack").read_bytes()
        with open(out / "manifest.json", "w", encoding="utf-8") as fh:
            fh.write('{"new": ')
            fh.flush()
            seen["reader saw"] = json.loads((target / "manifest.json").read_text(encoding="utf-8"))  # mid-write
            fh.write("true}")
        (out / "partial_parse.msgpack").write_bytes(b"this parse")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(dbt_runner.subprocess, "run", dbt_writing_slowly)
    assert dbt_runner.parse_if_changed(load_settings(tmp_path / "data"))
    assert seen == {"partial parse given": b"last parse", "reader saw": {"old": True}}
    assert json.loads((target / "manifest.json").read_text(encoding="utf-8")) == {"new": True}
    assert (target / "partial_parse.msgpack").read_bytes() == b"this parse"
    assert not [p for p in target.iterdir() if p.name.startswith(".parse-")]  # its folder is gone

    def failing(cmd, **kwargs):
        Path(cmd[cmd.index("--target-path") + 1], "manifest.json").write_text("{", encoding="utf-8")
        return subprocess.CompletedProcess(cmd, 2, "", "Compilation Error")

    monkeypatch.setattr(dbt_runner.subprocess, "run", failing)
    monkeypatch.setenv("PRIVDOM_ACTIVATION_WINDOW_DAYS", "7")  # something dbt reads changed: it parses again
    with pytest.raises(RuntimeError, match="dbt parse failed"):
        dbt_runner.parse_if_changed(load_settings(tmp_path / "data"))
    assert json.loads((target / "manifest.json").read_text(encoding="utf-8")) == {"new": True}  # a failed parse's half is not taken
    assert not [p for p in target.iterdir() if p.name.startswith(".parse-")]
