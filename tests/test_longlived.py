"""Long-lived objects leave the garbage collector's full passes only in `privdom`'s own process
(orchestration/longlived.py): when the run's definitions are built and when GX is first imported."""

from __future__ import annotations

import gc

import pytest

from tests.test_cli_exit import _run  # cli.run() in a fresh interpreter, main() replaced


def test_freeze_does_nothing_unless_the_process_enabled_it():
    from orchestration import longlived

    assert not longlived.enabled()  # a test session runs many runs: nothing of it may be frozen
    before = gc.get_freeze_count()
    assert longlived.freeze() is False
    assert gc.get_freeze_count() == before


def test_the_console_script_enables_it_and_gx_import_freezes(tmp_path):
    done = _run(
        tmp_path,
        """
        import gc
        from orchestration import longlived

        def fake_main(argv=None):
            print(longlived.enabled(), gc.get_freeze_count(), "great_expectations" in sys.modules)
            from orchestration import quality
            tracked_before = len(gc.get_objects())  # pandas and the rest, imported by quality
            quality._context()
            after_import = gc.get_freeze_count()
            quality._context()  # GX already imported: nothing more is frozen
            print(tracked_before, after_import, gc.get_freeze_count())
            return 0
        """,
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == "True 0 False"
    tracked_before, after_import, after_second = (int(x) for x in second.split())
    # frozen after GX's import, not before it: GX's modules and what they hold (~200k objects) are in it
    assert after_import > tracked_before + 50_000
    assert after_second == after_import


class _Stop(Exception):
    pass


def test_the_run_freezes_once_its_definitions_are_built(settings, monkeypatch):
    import dagster as dg

    from orchestration import dbt as dbt_runner
    from orchestration import definitions, longlived, runner

    calls = []

    class Defs:
        def resolve_implicit_global_asset_job_def(self):
            calls.append("job")
            return object()

    def stop():
        calls.append("instance")
        raise _Stop

    monkeypatch.setattr(definitions, "build_definitions", lambda: calls.append("definitions") or Defs())
    monkeypatch.setattr(dbt_runner, "parse_if_changed", lambda settings: None)
    monkeypatch.setattr(longlived, "freeze", lambda: calls.append("freeze") or False)
    monkeypatch.setattr(dg.DagsterInstance, "get", staticmethod(stop))
    with pytest.raises(_Stop):
        runner._run_pipeline_locked(settings, verbose=False, full_refresh=False)
    assert calls == ["definitions", "job", "freeze", "instance"]
