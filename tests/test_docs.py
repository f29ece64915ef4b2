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
