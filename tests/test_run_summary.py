"""The summary `privdom run` prints ends with commands to paste into a shell: they must name this data directory,
whatever its path holds (spaces, quotes, Chinese)."""

from __future__ import annotations

import shlex

from orchestration.runner import PipelineResult
from orchestration.settings import load_settings


def _commands(text: str) -> tuple[list[str], list[str]]:
    bi = next(line for line in text.splitlines() if line.strip().startswith("BI copy"))
    ui = next(line for line in text.splitlines() if line.strip().startswith("UI"))
    return shlex.split(bi.split("(", 1)[1].rsplit(")", 1)[0]), shlex.split(ui.split("UI", 1)[1].split("→")[0])


def test_the_printed_commands_quote_an_odd_data_directory(tmp_path, monkeypatch):
    """The DuckDB command opens the BI copy, never the warehouse (a reader holding it open stops the next run)."""
    monkeypatch.delenv("PRIVDOM_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "我的 数据 it's"
    (odd / "bi").mkdir(parents=True)
    (odd / "bi" / "warehouse.duckdb").write_bytes(b"")
    text = PipelineResult(load_settings(odd), "0123456789abcdef", True, 1.0).describe()
    duckdb_cmd, ui_cmd = _commands(text)
    assert duckdb_cmd == ["duckdb", "-readonly", str(odd / "bi" / "warehouse.duckdb")]
    assert ui_cmd == ["privdom", "--data-dir", str(odd), "ui"]
    # the default directory is named too: privdom sets PRIVDOM_HOME for its run, the user's shell may not have it
    plain = PipelineResult(load_settings(tmp_path / "data"), "0123456789abcdef", True, 1.0).describe()
    assert _commands(plain)[1] == ["privdom", "--data-dir", str(tmp_path / "data"), "ui"]


def test_results_not_published_yet_are_said_to_be_so(tmp_path):
    """A first run whose blocking check failed built no BI copy and no export: the summary says so instead of
    listing paths that do not exist."""
    settings = load_settings(tmp_path / "data")
    text = PipelineResult(settings, "0123456789abcdef", False, 1.0).describe()
    assert "BI copy" in text and "(not published yet: a run publishes it once its checks pass)" in text
    assert "(none yet: a run exports once its checks pass)" in text
    (settings.exports_dir / "one_time_buyers").mkdir(parents=True)
    (settings.exports_dir / "one_time_buyers" / "LATEST").write_text("x", encoding="utf-8")
    assert "none yet" not in PipelineResult(settings, "0123456789abcdef", True, 1.0).describe()


def test_an_empty_landing_zone_is_pointed_out_and_long_table_names_stay_aligned(tmp_path):
    settings = load_settings(tmp_path / "data")
    empty = [(source, 0, 0, 0, 0, 0, 0) for source in ("channel_events", "orders", "referrals")]
    tables = [("marts", "dim_customers", 1250370), ("intermediate", "int_customers__relationship_months", 7)]
    text = PipelineResult(settings, "0123456789abcdef", True, 1.0, ledger=empty, tables=tables).describe()
    assert f"no landing files yet: deliver batch files to {settings.landing_dir}/<source>/" in text
    rows = [line for line in text.splitlines() if line.endswith(" rows")]
    assert len(rows) == 2 and len({line.index(" rows") for line in rows}) == 1, rows
    loaded = [("orders", 3, 3, 0, 0, 120, 1)] + empty[1:]
    assert "no landing files" not in PipelineResult(settings, "0123456789abcdef", True, 1.0, ledger=loaded).describe()
