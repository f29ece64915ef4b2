"""The documentation that users read stays in step with the code."""

from pathlib import Path

from orchestration.contract import CONTRACTS

ROOT = Path(__file__).resolve().parent.parent


def test_data_contract_page_lists_every_rule_and_column():
    page = (ROOT / "docs" / "data-contract.md").read_text(encoding="utf-8")
    for contract in CONTRACTS.values():
        section = page.split(f"### `{contract.name}`", 1)[1].split("### ", 1)[0]
        for rule in contract.rules:
            assert f"`{rule.name}`" in section, (contract.name, rule.name)
        for column in contract.columns:
            assert f"`{column.name}`" in section, (contract.name, column.name)


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "privdom demo" in readme
    assert ".venv/bin/python -m pytest" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/python -m pytest" in ci


def test_the_segments_sources_document_every_column_of_the_tables_python_writes():
    """models/segments/__sources.yml documents the schema segments for dbt docs and the BI copy's comments; the
    sync tables and segment_definitions are created by Python, so their columns are compared with that code."""
    import duckdb
    import yaml

    from orchestration.segments import membership, sync

    doc = yaml.safe_load((ROOT / "dbt_project" / "models" / "segments" / "__sources.yml").read_text(encoding="utf-8"))
    documented = {
        table["name"]: {c["name"] for c in table.get("columns", []) if c.get("description", "").strip()}
        for source in doc["sources"] for table in source["tables"]
    }
    con = duckdb.connect()
    sync.ensure_sync_tables(con)
    con.execute(membership.DEFINITIONS_DDL)
    actual: dict[str, set[str]] = {}
    for table, column in con.execute(
        "select table_name, column_name from information_schema.columns where table_schema = 'segments'"
    ).fetchall():
        actual.setdefault(table, set()).add(column)
    assert set(actual) == set(documented) - {"segment_members"}
    for table, columns in actual.items():
        assert columns == documented[table], table
    # segment_members documents its own columns; the rest are dim_customers' (orchestration/bi.py)
    assert documented["segment_members"] == {"segment", "segment_version", "customer_key", "contact_channel",
                                             "contact_handle", "computed_at", "data_end_at"}
