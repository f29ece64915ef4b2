"""Segment definitions are data: defaults, overrides, and validation errors that name the segment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from orchestration.segments import SegmentDefinitionError, compile_rule, load_segment_definitions, parse_definitions
from orchestration.segments.definitions import DEFAULTS_FILE, _read_toml
from tests.segments_helpers import customer, days_before_end, write_dim_customers

DEFAULT_NAMES = {
    "new_not_activated", "one_time_buyers", "at_risk_high_value", "champions_to_distributors", "dormant_reachable", "top_referrers",
}


def _user(name: str, **table) -> list:
    base = {"version": 1, "purpose": "test", "campaign": "test", "rule": [{"column": "paid_orders", "op": "gte", "value": 1}]}
    base.update(table)
    return [("defaults", {}), ("privdom.toml", {name: base})]


def _error(layers) -> str:
    with pytest.raises(SegmentDefinitionError) as info:
        parse_definitions(layers)
    return str(info.value)


def test_the_six_defaults_load_with_version_purpose_and_campaign(tmp_path):
    defs = load_segment_definitions(tmp_path, {})
    assert {d.name for d in defs} == DEFAULT_NAMES
    for d in defs:
        assert d.version >= 1 and d.purpose and d.campaign and d.enabled and d.sql


def test_a_user_definition_overrides_a_default_and_adds_new_ones(tmp_path):
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "vip.toml").write_text(
        '[segments.vip]\nversion = 1\npurpose = "big spenders"\nrule = [{ column = "net_revenue", op = "gte", value = 1000 }]\n',
        encoding="utf-8",
    )
    sources = {
        "segments": {
            "top_referrers": {"version": 2, "purpose": "5+ referrals", "campaign": "tier", "rule": [{"column": "referrals_converted_12m", "op": "gte", "value": 5}]},
            "dormant_reachable": {"version": 1, "purpose": "off", "rule": [{"column": "paid_orders", "op": "eq", "value": 0}], "enabled": False},
        }
    }
    defs = {d.name: d for d in load_segment_definitions(tmp_path, sources)}
    assert defs["top_referrers"].version == 2 and defs["top_referrers"].params == (5,)
    assert defs["top_referrers"].source.endswith("privdom.toml")
    assert defs["dormant_reachable"].enabled is False
    assert defs["vip"].source.endswith("vip.toml") and defs["vip"].campaign == ""


def test_unknown_column_names_the_segment():
    message = _error(_user("spenders", rule=[{"column": "salary", "op": "gt", "value": 1}]))
    assert "segment 'spenders'" in message and "unknown column 'salary'" in message


def test_identifier_columns_are_not_rule_columns():
    message = _error(_user("by_phone", rule=[{"column": "phone_sha256", "op": "eq", "value": "x"}]))
    assert "segment 'by_phone'" in message and "unknown column 'phone_sha256'" in message


@pytest.mark.parametrize(
    ("condition", "words"),
    [
        ({"column": "paid_orders", "op": "gte", "value": "three"}, "whole number"),
        ({"column": "paid_orders", "op": "gte", "value": True}, "whole number"),
        ({"column": "rfm_segment", "op": "eq", "value": "Champs"}, "not a value of 'rfm_segment'"),
        ({"column": "lifecycle_stage", "op": "in", "value": ["new", "asleep"]}, "not a value of 'lifecycle_stage'"),
        ({"column": "acquired_at", "op": "within_last_days", "value": -3}, "whole number of days"),
        ({"column": "acquired_at", "op": "within_last_days", "value": "2024-01-01"}, "whole number of days"),
        ({"column": "last_paid_at", "op": "between_days_ago", "value": [60, 14]}, "[fewer_days, more_days]"),
        ({"column": "m_score", "op": "between", "value": [5, 4]}, "above high"),
        ({"column": "is_member", "op": "eq", "value": "yes"}, "true/false"),
        ({"column": "paid_orders", "op": "is_null", "value": 3}, "takes no value"),
        ({"column": "paid_orders", "op": "gte"}, "needs a value"),
        # marketer review: 99.999 was rounded to 100.00 without a word; "3" said nothing of the quotes
        ({"column": "net_revenue", "op": "gt", "value": 99.999}, "at most 2 decimal places"),
        ({"column": "net_revenue", "op": "gt", "value": float("nan")}, "money below 10^16"),
        ({"column": "net_revenue", "op": "lt", "value": 1e20}, "money below 10^16"),
        ({"column": "paid_orders", "op": "gte", "value": "3"}, "is a whole number, not '3' (write it without quotes)"),
    ],
)
def test_bad_value_names_the_segment(condition, words):
    message = _error(_user("bad_value", rule=[condition]))
    assert "segment 'bad_value'" in message and "bad value" in message and words in message


def test_unknown_operator_and_fields_name_the_segment():
    message = _error(_user("odd", rule=[{"column": "paid_orders", "op": "like", "value": 1}]))
    assert "segment 'odd'" in message and "unknown operator 'like'" in message
    message = _error(_user("odd2", sql="select 1"))
    assert "segment 'odd2'" in message and "unknown field(s) sql" in message
    message = _error(_user("odd3", rule=[{"column": "paid_orders", "op": "eq", "value": 1, "raw": "1=1"}]))
    assert "segment 'odd3'" in message and "column, op and value" in message


def test_missing_version_purpose_rule_name_the_segment():
    message = _error([("defaults", {}), ("privdom.toml", {"bare": {"campaign": "x"}})])
    assert "segment 'bare'" in message
    assert "version" in message and "purpose" in message and "needs a rule" in message


def test_duplicate_name_in_two_user_places_names_the_segment(tmp_path):
    (tmp_path / "segments").mkdir()
    table = '[segments.vip]\nversion = 1\npurpose = "p"\nrule = [{ column = "paid_orders", op = "gte", value = 3 }]\n'
    (tmp_path / "segments" / "a.toml").write_text(table, encoding="utf-8")
    (tmp_path / "segments" / "b.toml").write_text(table, encoding="utf-8")
    with pytest.raises(SegmentDefinitionError) as info:
        load_segment_definitions(tmp_path, {})
    message = str(info.value)
    assert "segment 'vip'" in message and "duplicate segment name" in message and "a.toml" in message and "b.toml" in message


def test_duplicate_name_in_one_file_names_the_segment(tmp_path):
    (tmp_path / "segments").mkdir()
    table = '[segments.vip]\nversion = 1\npurpose = "p"\nrule = [{ column = "paid_orders", op = "gte", value = 3 }]\n'
    (tmp_path / "segments" / "a.toml").write_text(table + table, encoding="utf-8")
    with pytest.raises(SegmentDefinitionError) as info:
        load_segment_definitions(tmp_path, {})
    assert "'vip'" in str(info.value) and "twice" in str(info.value)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "Top", "x y", ".hidden", "a" * 64, "名单"])
def test_names_that_could_escape_the_exports_folder_are_refused(name):
    message = _error(_user(name))
    assert f"segment {name!r}" in message and "no '/', '.' or spaces" in message


@pytest.mark.parametrize(
    "condition",
    [
        {"column": "paid_orders\"; drop table marts.dim_customers; --", "op": "eq", "value": 1},
        {"column": "paid_orders", "op": "= 1 or 1=1 --", "value": 1},
        {"column": "paid_orders", "op": "eq", "value": "1 or 1=1"},
        {"column": "rfm_segment", "op": "eq", "value": "Champions' or '1'='1"},
    ],
)
def test_sql_injection_attempts_are_refused_naming_the_segment(condition):
    message = _error(_user("inject", rule=[condition]))
    assert "segment 'inject'" in message


def test_free_text_values_are_bound_parameters_never_sql(tmp_path):
    """A campaign text full of SQL is just a value: it matches nothing and the table is intact."""
    warehouse = tmp_path / "w.duckdb"
    write_dim_customers(warehouse, [customer("C1", acquisition_campaign="spring"), customer("C2", acquisition_campaign="x'); drop table marts.dim_customers; --")])
    evil = "x'); drop table marts.dim_customers; --"
    (d,) = parse_definitions(_user("campaign_x", rule=[{"column": "acquisition_campaign", "op": "eq", "value": evil}]))
    assert evil not in d.sql and d.params == (evil,)
    con = duckdb.connect(str(warehouse))
    rows = con.execute(f"select customer_key from marts.dim_customers d where {d.sql}", list(d.params)).fetchall()
    assert rows == [("C2",)]
    assert con.execute("select count(*) from marts.dim_customers").fetchone()[0] == 2
    con.close()


def test_compile_rule_refuses_an_unvalidated_column():
    with pytest.raises(SegmentDefinitionError):
        compile_rule({"column": "1=1) or (1", "op": "eq", "value": 1})


def test_any_all_nest_and_null_never_matches(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    write_dim_customers(
        warehouse,
        [
            customer("C1", rfm_segment="Champions", m_score=5, paid_orders=4, last_paid_at=days_before_end(3), r_score=5, f_score=5),
            customer("C2", lifecycle_stage="new", acquired_at=days_before_end(2)),
            customer("C3"),  # neither
        ],
    )
    rule = {"any": [{"all": [{"column": "m_score", "op": "gte", "value": 5}, {"column": "paid_orders", "op": "gt", "value": 3}]},
                    {"column": "acquired_at", "op": "within_last_days", "value": 7}]}
    (d,) = parse_definitions(_user("mixed", rule=rule))
    con = duckdb.connect(str(warehouse))
    keys = {r[0] for r in con.execute(f"select customer_key from marts.dim_customers d where {d.sql}", list(d.params)).fetchall()}
    assert keys == {"C1", "C2"}
    # m_score is NULL for C2 and C3: "not 5" must not select a customer without a score
    (d2,) = parse_definitions(_user("not_five", rule=[{"column": "m_score", "op": "ne", "value": 5}]))
    assert con.execute(f"select count(*) from marts.dim_customers d where {d2.sql}", list(d2.params)).fetchone()[0] == 0
    con.close()


def test_every_problem_is_reported_at_once():
    layers = [("defaults", {}), ("privdom.toml", {
        "one": {"version": 1, "purpose": "p", "rule": [{"column": "nope", "op": "eq", "value": 1}]},
        "two": {"version": 0, "purpose": "p", "rule": [{"column": "paid_orders", "op": "eq", "value": 1}]},
    })]
    message = _error(layers)
    assert "segment 'one'" in message and "segment 'two'" in message


def test_shipped_defaults_file_is_the_one_loaded():
    assert set(_read_toml(DEFAULTS_FILE)["segments"]) == DEFAULT_NAMES


def test_the_code_location_refuses_to_load_a_bad_definition(tmp_path, dbt_manifest):
    """Validation happens when Dagster loads the code location, with the segment's name in the error."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "privdom.toml").write_text(
        '[segments.broken_one]\nversion = 1\npurpose = "p"\nrule = [{ column = "no_such_column", op = "eq", value = 1 }]\n',
        encoding="utf-8",
    )
    env = {**os.environ, "PRIVDOM_HOME": str(data)}
    result = subprocess.run(
        [sys.executable, "-c", "from orchestration.definitions import build_definitions; build_definitions()"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent, timeout=300,
    )
    assert result.returncode != 0
    assert "segment 'broken_one'" in result.stderr and "unknown column 'no_such_column'" in result.stderr


def test_the_rules_page_lists_every_column_and_operator():
    from orchestration.segments.definitions import COLUMNS, OPERATORS_BY_KIND

    page = (Path(__file__).resolve().parent.parent / "docs" / "segments.md").read_text(encoding="utf-8")
    for name, col in COLUMNS.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {col.kind} |" in row and all(v in row for v in (col.allowed or ()))
    for kind, ops in OPERATORS_BY_KIND.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| {kind} |"))
        assert all(f"`{op}`" in row for op in ops), kind
    from orchestration.segments.definitions import LIST_OPERATORS

    for name, col in COLUMNS.items():
        if col.items:
            row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
            assert all(f"`{op}`" in row for op in LIST_OPERATORS) and all(v in row for v in col.items), name


def test_contains_selects_one_relationship_of_the_list(tmp_path):
    """Marketer review: no rule could select "is a WeCom contact": `eq "wecom"` matched 391 of 973 (those reachable
    on WeCom alone). Worked by hand: C1 wecom alone, C2 official_account and wecom, C3 official_account, C4 none."""
    path = tmp_path / "w.duckdb"
    write_dim_customers(path, [
        customer("C1", reachable_channels="wecom"),
        customer("C2", reachable_channels="official_account,wecom"),
        customer("C3", reachable_channels="official_account"),
        customer("C4", reachable_channels=None),
    ])
    con = duckdb.connect(str(path))
    for op, expected in (("contains", ["C1", "C2"]), ("not_contains", ["C3"])):
        (d,) = [x for x in parse_definitions(_user("w", rule=[{"column": "reachable_channels", "op": op, "value": "wecom"}]))
                if x.name == "w"]
        got = [k for (k,) in con.execute(f"select customer_key from marts.dim_customers d where {d.sql} order by 1", d.params).fetchall()]
        assert got == expected, op
    message = _error(_user("w", rule=[{"column": "reachable_channels", "op": "contains", "value": "weixin"}]))
    assert "'contains' on 'reachable_channels' takes one of community_group, member, official_account, wecom" in message
    message = _error(_user("w", rule=[{"column": "acquisition_campaign", "op": "contains", "value": "x"}]))
    assert "unknown operator 'contains'" in message


@pytest.mark.parametrize("name", ["adds", "removes"])
def test_the_names_of_an_export_folders_other_files_are_refused(name):
    # an export folder holds <segment>.<format>, adds.<format> and removes.<format>
    message = _error(_user(name))
    assert name in message and "reserved" in message


def test_enabled_false_alone_switches_a_default_off_as_it_is(tmp_path):
    """README: a definition with a default's name replaces it, and `enabled = false` switches one off; a table
    holding only `enabled` keeps the default's rule, version and purpose."""
    shipped = {d.name: d for d in load_segment_definitions(tmp_path, {})}
    defs = {d.name: d for d in load_segment_definitions(tmp_path, {"segments": {"top_referrers": {"enabled": False}}})}
    off = defs["top_referrers"]
    assert off.enabled is False and off.source.endswith("privdom.toml")
    assert (off.version, off.purpose, off.sql, off.params) == (
        shipped["top_referrers"].version, shipped["top_referrers"].purpose, shipped["top_referrers"].sql,
        shipped["top_referrers"].params)
    # a new segment still needs its whole definition
    assert "vip" in _error([("defaults", {}), ("privdom.toml", {"vip": {"enabled": False}})])


def test_privdom_run_reports_a_bad_definition_in_one_line_with_exit_status_2(tmp_path, dbt_manifest):
    """Not a traceback of Dagster's definition loading: the definition error's own message, as a settings error."""
    from orchestration import cli

    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    (data / "segments" / "vip.toml").write_text(
        '[segments.vip]\nversion = 1\npurpose = "p"\nrule = [{ column = "nett_revenue", op = "gte", value = 2 }]\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "--data-dir", str(data), "run"],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PRIVDOM_", "DAGSTER_"))},
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.startswith("privdom: invalid segment definitions:")
    assert "segment 'vip'" in result.stderr and "unknown column 'nett_revenue'" in result.stderr
    assert "Traceback" not in result.stderr
    assert cli._definition_error(RuntimeError("wrapped")) is None


def test_a_segments_file_saved_by_windows_notepad_is_read_or_named(tmp_path):
    """Marketer review: a UTF-8 file with a BOM failed as "Invalid statement (at line 1, column 1)", a GBK one with a
    60-line traceback, and campaigns.toml.txt or CAMPAIGNS.TOML were skipped without a word."""
    seg = tmp_path / "segments"
    seg.mkdir()
    table = '[segments.vip_618]\nversion = 1\npurpose = "618 大促 VIP"\nrule = [{ column = "paid_orders", op = "gte", value = 3 }]\n'
    (seg / "a.toml").write_bytes(b"\xef\xbb\xbf" + table.encode("utf-8"))
    assert "vip_618" in {d.name for d in load_segment_definitions(tmp_path, {})}
    (seg / "a.toml").write_bytes(table.encode("gbk"))
    with pytest.raises(SegmentDefinitionError, match=r"a\.toml: not UTF-8 text .*save it as UTF-8"):
        load_segment_definitions(tmp_path, {})
    (seg / "a.toml").write_bytes(table.encode("utf-8"))
    (seg / "campaigns.toml.txt").write_text(table.replace("vip_618", "other"), encoding="utf-8")
    (seg / "CAMPAIGNS3.TOML").write_text(table.replace("vip_618", "third"), encoding="utf-8")
    for other in (".notes.md", "README.md", "Thumbs.db", "desktop.ini"):  # left alone (diff review)
        (seg / other).write_text("kept aside", encoding="utf-8")
    (seg / "archive").mkdir()
    with pytest.raises(SegmentDefinitionError) as info:
        load_segment_definitions(tmp_path, {})
    assert "CAMPAIGNS3.TOML, campaigns.toml.txt: only files ending in .toml (lower case) are read here" in str(info.value)
    (seg / "campaigns.toml.txt").unlink()
    (seg / "CAMPAIGNS3.TOML").unlink()
    assert "vip_618" in {d.name for d in load_segment_definitions(tmp_path, {})}


def test_the_settings_file_saved_with_a_bom_or_in_gbk(tmp_path):
    from orchestration.settings import SettingsError, load_settings

    (tmp_path / "privdom.toml").write_bytes(b"\xef\xbb\xbf" + "max_quarantine_share = 0.1 # 上限\n".encode("utf-8"))
    assert load_settings(tmp_path).max_quarantine_share == 0.1
    (tmp_path / "privdom.toml").write_bytes("max_quarantine_share = 0.1 # 上限\n".encode("gbk"))
    with pytest.raises(SettingsError, match="not UTF-8 text"):
        load_settings(tmp_path)


def test_a_destination_listing_a_switched_off_segment_says_so():
    """Marketer review: "unknown segment(s) 'top_referrers'" of a segment that was defined, only switched off."""
    from orchestration.segments import DestinationConfigError, parse_destinations

    table = {"crm": {"type": "webhook", "url": "https://x.example", "secret_env": "S", "segments": ["top_referrers", "nope"]}}
    with pytest.raises(DestinationConfigError) as info:
        parse_destinations(table, ["buyers"], switched_off=["top_referrers"])
    message = str(info.value)
    assert "segment(s) 'top_referrers' switched off (enabled = false)" in message and "unknown segment(s) 'nope'" in message


def test_privdom_segments_checks_and_counts_a_draft_without_writing(tmp_path):
    """Marketer review: the only way to try a definition was `privdom run`, which exports and syncs at once.
    `privdom segments` validates the definitions and destinations and counts each enabled segment on the warehouse
    as it is; nothing is written. Worked by hand: vip (paid_orders >= 2) matches C1, C2 and C3, C3 opted out."""
    data = tmp_path / "data"
    data.mkdir()
    write_dim_customers(data / "warehouse.duckdb", [
        customer("C1", paid_orders=2), customer("C2", paid_orders=5),
        customer("C3", paid_orders=3, opted_out=True, is_reachable=False), customer("C4", paid_orders=1),
    ])
    (data / "privdom.toml").write_text(
        '[segments.vip]\nversion = 2\npurpose = "p"\nrule = [{ column = "paid_orders", op = "gte", value = 2 }]\n'
        '[segments.top_referrers]\nenabled = false\n', encoding="utf-8")
    before = (data / "warehouse.duckdb").read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIVDOM_", "DAGSTER_"))}

    def segments():
        return subprocess.run([sys.executable, "-m", "orchestration.cli", "--data-dir", str(data), "segments"],
                              capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300, env=env)

    result = segments()
    assert result.returncode == 0, result.stderr
    vip = next(line for line in result.stdout.splitlines() if line.startswith("vip "))
    assert vip.split()[-3:] == ["3", "1", "2"] and " 2 " in vip and "enabled" in vip
    assert "switched off" in next(line for line in result.stdout.splitlines() if line.startswith("top_referrers "))
    assert "7 definitions valid (6 enabled)" in result.stdout and "nothing was written or sent" in result.stdout
    assert (data / "warehouse.duckdb").read_bytes() == before and not (data / "exports").exists()
    (data / "privdom.toml").write_text(
        '[segments.vip]\nversion = 2\npurpose = "p"\nrule = [{ column = "paid_order", op = "gte", value = 2 }]\n', encoding="utf-8")
    result = segments()
    assert result.returncode == 2 and "unknown column 'paid_order'" in result.stderr and "Traceback" not in result.stderr


def test_mistakes_are_told_in_the_words_of_the_file_not_of_python():
    """Marketer review: "not datetime.date(2024, 6, 1)", "version ... not None" and "got ['or']" asked the
    analyst to read Python."""
    import datetime as dt

    message = _error(_user("d", rule=[{"column": "acquired_at", "op": "within_last_days", "value": dt.date(2024, 6, 1)}]))
    assert "2024-06-01 (a date)" in message and "datetime" not in message
    eight = dt.timezone(dt.timedelta(hours=8))
    message = _error(_user("d", rule=[{"column": "acquired_at", "op": "within_last_days", "value": dt.datetime(2024, 6, 1, tzinfo=eight)}]))
    assert "2024-06-01T00:00:00+08:00 (a date and time)" in message and "datetime" not in message
    message = _error(_user("d", rule=[{"column": "paid_orders", "op": "eq", "value": dt.time(10, 0)}]))
    assert "10:00:00 (a time)" in message and "datetime" not in message
    layers = [("defaults", {}), ("privdom.toml", {"v": {"purpose": "p", "rule": [{"column": "paid_orders", "op": "gte", "value": 1}]}})]
    assert "version is missing: a whole number ≥ 1" in _error(layers) and "None" not in _error(layers)
    message = _error(_user("o", rule=[{"or": [{"column": "paid_orders", "op": "gte", "value": 1}]}]))
    assert "{ any = [...] } or { all = [...] }" in message


def test_a_settings_file_in_utf16_is_named_as_such(tmp_path):
    from orchestration.settings import SettingsError, load_settings

    (tmp_path / "privdom.toml").write_bytes("max_quarantine_share = 0.1\n".encode("utf-16"))
    with pytest.raises(SettingsError, match="not UTF-8 text .*\"Unicode\""):
        load_settings(tmp_path)


def test_export_options_take_the_two_warning_thresholds_and_refuse_what_is_no_number_of_days():
    from orchestration.segments.definitions import ExportOptions, SegmentDefinitionError, export_options

    assert export_options({}) == ExportOptions()
    assert (ExportOptions().warn_data_age_days, ExportOptions().warn_source_lag_days) == (2.0, 7.0)
    options = export_options({"exports": {"warn_data_age_days": 1, "warn_source_lag_days": 30}})
    assert (options.warn_data_age_days, options.warn_source_lag_days) == (1.0, 30.0)
    for bad in (-1, True, "7"):
        with pytest.raises(SegmentDefinitionError, match=r"\[exports\] warn_source_lag_days must be a number of days ≥ 0"):
            export_options({"exports": {"warn_source_lag_days": bad}})
    with pytest.raises(SegmentDefinitionError, match="known: csv_bom, formats, keep, warn_data_age_days, warn_source_lag_days"):
        export_options({"exports": {"warn_source_lag": 7}})


def test_privdom_segments_reads_a_data_directory_it_cannot_write(tmp_path, monkeypatch, capsys):
    """Runbook review: on a read-only data directory (a mount, another user's directory) `privdom segments`, which
    writes nothing, failed on creating the lock file. It now counts without privdom's lock (DuckDB's own keeps a
    writer apart). Tests run as root, whom permissions do not stop: the lock file's open is made to fail."""
    import errno

    from orchestration import locking
    from orchestration.cli import main

    monkeypatch.delenv("PRIVDOM_HOME", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    write_dim_customers(data / "warehouse.duckdb", [customer("C1", paid_orders=2), customer("C2", paid_orders=1)])
    real_open = os.open

    def refused(path, flags, *args, **kwargs):
        if str(path).endswith(locking.LOCK_FILE_NAME):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(locking.os, "open", refused)
    assert main(["--data-dir", str(data), "segments"]) == 0
    out = capsys.readouterr().out
    assert "counted on marts.dim_customers" in out and not (data / locking.LOCK_FILE_NAME).exists()
    # any other failure of the lock is still an error
    monkeypatch.setattr(locking.os, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        with locking.reading_lock(data, what="t"):
            pass
