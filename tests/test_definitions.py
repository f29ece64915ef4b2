"""The code location loads, and no asset or check silently disappears (compare with a stored list)."""

from __future__ import annotations

from pathlib import Path

EXPECTED = Path(__file__).with_name("expected_asset_keys.txt")


def _keys(dbt_manifest, monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVDOM_HOME", str(tmp_path / "data"))
    from orchestration.definitions import build_definitions

    defs = build_definitions()
    repo = defs.get_repository_def()
    asset_keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    check_keys = {f"{k.asset_key.to_user_string()}:{k.name}" for k in repo.asset_graph.asset_check_keys}
    return defs, asset_keys, check_keys


def test_definitions_load_with_every_expected_asset_and_check(dbt_manifest, monkeypatch, tmp_path):
    defs, asset_keys, check_keys = _keys(dbt_manifest, monkeypatch, tmp_path)
    actual = sorted(asset_keys | check_keys)
    expected = [line for line in EXPECTED.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    missing = sorted(set(expected) - set(actual))
    added = sorted(set(actual) - set(expected))
    assert not missing and not added, (
        f"asset graph changed: missing {missing}, new {added}. If intended, regenerate {EXPECTED.name} with "
        "`.venv/bin/python -m tests.test_definitions`."
    )


def test_every_warehouse_writer_is_in_the_warehouse_pool(dbt_manifest, monkeypatch, tmp_path):
    defs, _, _ = _keys(dbt_manifest, monkeypatch, tmp_path)
    repo = defs.get_repository_def()
    for assets_def in repo.assets_defs_by_key.values():
        if not assets_def.is_executable:
            continue
        assert assets_def.node_def.pool == "warehouse", assets_def.node_def.name


def test_raw_assets_feed_dbt_staging(dbt_manifest, monkeypatch, tmp_path):
    """dbt sources carry the ingest assets' keys, so raw → staging is one lineage graph."""
    import dagster as dg

    defs, _, _ = _keys(dbt_manifest, monkeypatch, tmp_path)
    graph = defs.get_repository_def().asset_graph
    parents = graph.get(dg.AssetKey(["staging", "stg_orders__versions"])).parent_keys
    assert dg.AssetKey(["raw", "orders"]) in parents


if __name__ == "__main__":  # regenerate the stored list
    import os
    import tempfile

    from orchestration import dbt as dbt_runner
    from orchestration.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PRIVDOM_HOME"] = tmp
        dbt_runner.parse(load_settings(tmp))
        from orchestration.definitions import build_definitions

        repo = build_definitions().get_repository_def()
        keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
        keys |= {f"{k.asset_key.to_user_string()}:{k.name}" for k in repo.asset_graph.asset_check_keys}
    EXPECTED.write_text("# asset keys and asset checks (asset:check) of the code location\n" + "\n".join(sorted(keys)) + "\n", encoding="utf-8")
    print(f"wrote {len(keys)} keys to {EXPECTED}")


def test_dbt_steps_do_not_build_a_dbt_adapter_in_process():
    """dagster-dbt builds a dbt adapter in the Dagster process before every invocation (~1.7 s), for
    metadata privdom does not fetch; privdom's resource skips it through dagster-dbt's own hook. If a
    dagster-dbt upgrade renames the hook, this fails instead of the saving silently disappearing."""
    import inspect

    from dagster_dbt import DbtCliResource

    from orchestration.defs.resources import PrivdomDbtCliResource, resources

    hook = DbtCliResource._initialize_dbt_core_adapter
    assert list(inspect.signature(hook).parameters) == ["self", "args"]
    assert "_initialize_dbt_core_adapter" in inspect.getsource(DbtCliResource.cli)
    dbt = resources().resources["dbt"]
    assert isinstance(dbt, PrivdomDbtCliResource)
    assert dbt._initialize_dbt_core_adapter(["build"]) is None


def test_every_singular_test_that_reads_several_models_says_which_asset_it_checks(dbt_manifest):
    """A singular test that refs more than one model (a reconciliation) is no asset check unless its config names
    the asset it checks: dagster-dbt leaves it out with a warning deep in the run log, and its failure shows in
    no check (the contributor review). Each such test says `meta.dagster.ref`."""
    import json

    manifest = json.loads(dbt_manifest.read_text(encoding="utf-8"))
    missing = []
    for node in manifest["nodes"].values():
        if node["resource_type"] != "test" or node.get("test_metadata"):  # generic tests name their model
            continue
        models = {d for d in node["depends_on"]["nodes"] if d.startswith("model.")}
        dagster_meta = (node.get("config", {}).get("meta") or node.get("meta") or {}).get("dagster", {})
        if len(models) > 1 and not (dagster_meta.get("ref") or dagster_meta.get("asset_key")):
            missing.append(
                f"{node['original_file_path']}: reads {', '.join(sorted(m.split('.')[-1] for m in models))}; add "
                "{{ config(meta={'dagster': {'ref': {'name': '<the model it checks>'}}}) }} as its first line"
            )
    assert not missing, "\n".join(missing)
