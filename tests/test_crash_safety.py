"""A `privdom run` killed (SIGKILL of its process group) at several points, then a normal run, leaves the
same warehouse, BI copy and exports as one uninterrupted run on the same landing files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

PRIVDOM = Path(sys.executable).with_name("privdom")
# When a row was loaded or a key assigned, and by which run: differ between any two runs by nature.
VOLATILE_COLUMNS = {
    "_loaded_at", "loaded_at", "load_id", "started_at", "finished_at", "quarantined_at",
    "created_run_id", "closed_at", "closed_run_id", "merged_at", "split_at", "run_id",
    "computed_at",  # when the segments were computed (wall clock, on every segment row and export)
    "recorded_at",  # when a dbt step recorded what its incremental models were built with
    "built_at",  # when the identity graph was built (its change log)
    "_built_at",  # when the dbt build that wrote a row of int_channel_events__customers started
    "tested_built_at",  # the newest of those that the data tests have covered (raw.dbt_incremental_state)
    "registry_id",  # the key registry's id (identity_state.key_registry): one of its own per warehouse
}
# The identity graph's change log records every build: a run that was killed and run again builds the graph once
# more (with nothing new) and its readers take in both builds, so the log's rows differ from an uninterrupted
# run's by design; that the readers took in the builds' changes shows in the tables they wrote being equal.
CHANGE_LOG = {"identity_state.graph_builds", "identity_state.graph_changed_components", "identity_state.graph_consumers"}
# a cache of the landing files' hashes by their stamps (inode, change time: the two data dirs' copies differ) and
# written only for files that changed more than 2 s before they were read: checked against the files instead
HASH_CACHE = "raw.landing_hash_cache"
# created_at is an order's own data everywhere but in the key registry, where it is when a key was assigned
REGISTRY_SCHEMA = "identity_state"


def _run(data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(PRIVDOM), "--data-dir", str(data_dir), "run"], capture_output=True, text=True, timeout=900)


def _killed_run(data_dir: Path, until, what: str, poll: float = 0.05) -> None:
    """Start a run, wait until `until(data_dir)` is true, SIGKILL the whole process group (dbt included)."""
    proc = subprocess.Popen(
        [str(PRIVDOM), "--data-dir", str(data_dir), "run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not until(data_dir):
        assert proc.poll() is None, f"the run ended before the kill point: {what}"
        assert time.monotonic() < deadline, f"kill point never reached: {what}"
        time.sleep(poll)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _log_says(text: str):
    def check(data_dir: Path) -> bool:
        logs = sorted((data_dir / "logs").glob("run-*.log"), key=lambda p: p.stat().st_mtime)
        return bool(logs) and text in logs[-1].read_text(encoding="utf-8", errors="replace")
    return check


def _exporting(data_dir: Path) -> bool:
    """A segment export is being written (its hidden temporary folder exists)."""
    return any((data_dir / "exports").glob("*/.tmp-*"))


def _spilling(data_dir: Path) -> bool:
    """An ingest step has judged rows in its scratch directory and has not loaded them yet."""
    return any((data_dir / "tmp").glob("ingest-*/*.parquet"))


def snapshot(path: Path) -> dict[str, list]:
    """Every table of every schema, rows sorted, without the volatile columns."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = con.execute(
            "select table_schema, table_name from information_schema.tables order by 1, 2"
        ).fetchall()
        out = {}
        for schema, table in tables:
            cols = [
                c for (c,) in con.execute(
                    "select column_name from information_schema.columns where table_schema = ? and table_name = ? order by ordinal_position",
                    [schema, table],
                ).fetchall()
                if c not in VOLATILE_COLUMNS and not (c == "created_at" and schema == REGISTRY_SCHEMA)
            ]
            select = ", ".join(f'"{c}"' for c in cols) or "count(*)"  # identity_state.key_registry: its row count
            out[f"{schema}.{table}"] = con.execute(f'select {select} from "{schema}"."{table}" order by all').fetchall()
        return out
    finally:
        con.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from orchestration.generate import generate

    clean = tmp_path_factory.mktemp("clean")
    generate(clean / "landing", customers=80, days=20, seed=5, dirty_rate=0.02)
    crashed = tmp_path_factory.mktemp("crashed")
    shutil.copytree(clean / "landing", crashed / "landing")
    # a tiny batch's quarantine share passes the 5 % limit, which would hold back the exports and fail the run
    for data_dir in (clean, crashed):
        (data_dir / "privdom.toml").write_text("max_quarantine_share = 1.0\n", encoding="utf-8")

    reference = _run(clean)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    _killed_run(crashed, _spilling, "during ingestion", poll=0.005)
    left_by_the_kill = sorted(p.name for p in (crashed / "tmp").iterdir())
    _killed_run(crashed, _log_says("START sql incremental model staging.stg_orders__versions"), "in the middle of dbt build (staging)")
    _killed_run(crashed, _log_says("START sql table model marts.dim_customers"), "in the middle of dbt build (marts)")
    _killed_run(crashed, _exporting, "in the middle of the segment exports", poll=0.001)
    exported_before_the_kill = sorted(p.parent.name for p in (crashed / "exports").glob("*/LATEST"))
    final = _run(crashed)
    return clean, crashed, final, exported_before_the_kill, left_by_the_kill


# An export's own identity and wall-clock times, and its warehouse's key registry (an id of its own per warehouse);
# everything else in the manifest must be equal.
VOLATILE_MANIFEST_KEYS = {"export_id", "exported_at", "computed_at", "files", "key_registry"}


def exports_snapshot(exports: Path) -> dict:
    """Per segment: its folder listing (hidden leftovers included, export ids as positions), LATEST's manifest
    without the volatile keys, and every file's rows read back (computed_at aside), sorted."""
    con = duckdb.connect()
    out = {}
    try:
        for segment_dir in sorted(p for p in exports.iterdir() if p.is_dir()):
            latest = (segment_dir / "LATEST").read_text(encoding="utf-8").strip()
            folder = segment_dir / latest
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            files = {}
            for f in manifest["files"]:
                path = str(folder / f["name"])
                reader = {"csv": f"read_csv('{path}', all_varchar = true)", "parquet": f"read_parquet('{path}')",
                          "jsonl": f"read_json('{path}', format = 'newline_delimited')"}[f["format"]]
                files[f["name"]] = (f["kind"], f["rows"], con.execute(f"select * exclude (computed_at) from {reader} order by all").fetchall())
            out[segment_dir.name] = {
                "listing": sorted("<LATEST>" if p.name == latest else p.name for p in segment_dir.iterdir()),
                "manifest": {k: v for k, v in manifest.items() if k not in VOLATILE_MANIFEST_KEYS},
                "files": files,
            }
    finally:
        con.close()
    return out


def test_the_run_after_the_kills_succeeds(runs):
    _, _, final, _, _ = runs
    assert final.returncode == 0, final.stdout + final.stderr


def test_a_killed_ingestions_scratch_is_removed(runs):
    """SIGKILL leaves an ingest step's spilled parts in `tmp/`; a later run removes them (orchestration/scratch.py)."""
    _, crashed, _, _, left_by_the_kill = runs
    assert any(name.startswith("ingest-") for name in left_by_the_kill), left_by_the_kill
    assert list((crashed / "tmp").iterdir()) == []


def test_exports_equal_an_uninterrupted_run(runs):
    """Killed while writing one segment's export (others done or not started): the next run publishes each
    segment once, as the uninterrupted run did, and leaves no temporary folder."""
    clean, crashed, _, exported_before_the_kill, _ = runs
    expected, actual = exports_snapshot(clean / "exports"), exports_snapshot(crashed / "exports")
    assert len(exported_before_the_kill) < len(expected)  # the kill came before the last segment's export
    assert sorted(actual) == sorted(expected)
    for segment in expected:
        assert actual[segment] == expected[segment], segment
        assert actual[segment]["listing"] == ["<LATEST>", "LATEST"], segment


def test_warehouse_equals_an_uninterrupted_run(runs):
    clean, crashed, _, _, _ = runs
    expected, actual = snapshot(clean / "warehouse.duckdb"), snapshot(crashed / "warehouse.duckdb")
    assert sorted(actual) == sorted(expected)  # no leftover dbt temp/backup tables either
    for table in expected:
        if table not in CHANGE_LOG and table != HASH_CACHE:
            assert actual[table] == expected[table], table
    from orchestration.ingest.files import sha256_of

    for data_dir, snap in ((clean, expected), (crashed, actual)):
        for source, path, size, _, _, _, sha in snap[HASH_CACHE]:
            assert sha256_of(data_dir / "landing" / path) == (sha, size), path
    # every reader of the change log took in its last build, in both
    for snap in (expected, actual):
        (last,) = max(snap["identity_state.graph_builds"])[:1]
        assert {seq for _, seq in snap["identity_state.graph_consumers"]} == {last}


def test_bi_copy_equals_an_uninterrupted_run(runs):
    clean, crashed, _, _, _ = runs
    assert snapshot(crashed / "bi" / "warehouse.duckdb") == snapshot(clean / "bi" / "warehouse.duckdb")
    assert not list((crashed / "bi").glob(".*.tmp"))


def test_killed_runs_are_marked_failed_and_hold_no_pool_slot(runs):
    import dagster as dg

    _, crashed, _, _, _ = runs
    with dg.DagsterInstance.from_config(str(crashed / "dagster")) as instance:
        statuses = [r.status for r in instance.get_runs()]
        assert statuses.count(dg.DagsterRunStatus.SUCCESS) == 1
        assert dg.DagsterRunStatus.STARTED not in statuses
        assert not instance.event_log_storage.get_concurrency_run_ids()
