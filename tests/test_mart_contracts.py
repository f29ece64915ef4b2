"""SPEC §4: the marts are a published interface (BI dashboards read them by name and type). Each mart model has
an enforced dbt contract on DuckDB, with a data_type for every column, so a changed type (a DECIMAL becoming
DOUBLE, a DATE becoming TIMESTAMP, a BIGINT becoming HUGEINT) or a renamed, added or dropped column fails
`dbt build` before the published table is replaced. Without it such a change passed every test but one that
happened to compare a date (the dbt-practice review). On Spark the contract is off (its type names differ) and
tests/test_spark_parity.py holds Spark's types to DuckDB's.
"""

from __future__ import annotations

import json
import os

from orchestration.settings import DBT_PROJECT_DIR, load_settings


def _parse(target: str, tmp_path, monkeypatch) -> dict:
    from dbt.cli.main import dbtRunner

    settings = load_settings(tmp_path / "data")
    for name, value in settings.dbt_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    out = tmp_path / target
    result = dbtRunner().invoke([
        "parse", "--no-partial-parse", "--target", target,
        "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
        "--target-path", str(out / "target"), "--log-path", str(out / "logs"),
        "--vars", json.dumps(settings.dbt_vars()),
    ])
    assert result.success, result.exception
    return json.loads((out / "target" / "manifest.json").read_text(encoding="utf-8"))


def _marts(target: str, tmp_path, monkeypatch) -> dict[str, dict]:
    """The mart models of the project parsed for `target`; the environment as it was afterwards (dbt sets
    variables of its own)."""
    saved = dict(os.environ)
    try:
        manifest = _parse(target, tmp_path, monkeypatch)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model" and n["schema"] == "marts"}


def test_every_mart_has_an_enforced_contract_with_a_type_for_every_column(tmp_path, monkeypatch):
    marts = _marts("duckdb", tmp_path, monkeypatch)
    assert {"dim_customers", "fct_orders", "fct_aarrr_funnel", "fct_cohort_retention", "fct_private_domain_triangle",
            "fct_referrals", "fct_fission_summary"} <= set(marts)
    problems = [name for name, node in marts.items() if not node["config"]["contract"]["enforced"]]
    problems += [f"{name}.{c}" for name, node in marts.items() for c, col in node["columns"].items() if not col.get("data_type")]
    assert not problems, problems
    # SPEC §2/§4: money is DECIMAL(18,2), a month is a DATE, an instant keeps its time zone
    types = {(name, c): col["data_type"] for name, node in marts.items() for c, col in node["columns"].items()}
    assert types[("dim_customers", "net_revenue")] == types[("fct_cohort_retention", "net_revenue")] == "decimal(18,2)"
    assert types[("fct_aarrr_funnel", "cohort_month")] == types[("fct_private_domain_triangle", "period_month")] == "date"
    assert types[("fct_orders", "paid_at")] == types[("dim_customers", "acquired_at")] == "timestamptz"


def test_the_contract_is_off_on_spark_whose_type_names_differ(tmp_path, monkeypatch):
    marts = _marts("spark", tmp_path, monkeypatch)
    assert marts and not [name for name, node in marts.items() if node["config"]["contract"]["enforced"]]
