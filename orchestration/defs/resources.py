"""Resources shared by every asset: the privdom settings/warehouse and the dbt CLI."""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import dagster as dg
import duckdb
from dagster_dbt import DbtCliResource
from packaging.version import Version

from orchestration import dbt as dbt_runner
from orchestration import locking, pool_wait, warehouse
from orchestration.dbt import DBT_TARGET, apply_dbt_environment, command_executable, dbt_executable
from orchestration.settings import DBT_PROJECT_DIR, Settings, SettingsError, load_settings, resolve_data_dir

# Pool shared by every asset that writes the warehouse: DuckDB allows one writer per file. The instance
# config (dagster.yaml) limits it to 1, so a second run queues instead of failing on the file lock. Each
# writer also holds the data directory's lock file (orchestration/locking.py), which serialises writers of
# different processes and instances and is released by the kernel when a killed run dies.
WAREHOUSE_POOL = "warehouse"

# a step waiting for that pool sleeps between its claim checks instead of spinning (Dagster 1.13: orchestration/pool_wait.py)
pool_wait.apply()


class PrivdomResource(dg.ConfigurableResource):
    """Settings and warehouse access for one data directory (PRIVDOM_HOME)."""

    data_dir: str

    def settings(self) -> Settings:
        return load_settings(self.data_dir)

    @contextlib.contextmanager
    def connect(self, *, read_only: bool = False, memory_limit: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """The warehouse, with DuckDB's memory limit the setting duckdb_memory_limit unless `memory_limit` is given
        (a share of it, for a step that runs a second DuckDB at the same time)."""
        settings = self.settings()
        limit = settings.duckdb_memory_limit if memory_limit is None else memory_limit
        with warehouse.connection(settings.warehouse_path, read_only=read_only, memory_limit=limit) as con:
            yield con

    @contextlib.contextmanager
    def writer(self, context: dg.OpExecutionContext) -> Iterator[None]:
        """Hold the warehouse lock for this step (taken inside the pool slot: see orchestration/locking.py).

        Another kind of process (a notebook, a DuckDB shell, a BI tool) holding DuckDB's own lock on the file
        fails the step with what to do, as a Failure: the step's error in the UI and the run log is that one
        paragraph, not a traceback through privdom's code (`privdom run` checks before it starts instead)."""
        # with another dbt target (PRIVDOM_DBT_TARGET=spark) no step of this graph can do its part: refused before
        # anything is written (the dbt steps say the same; a sensor's runs would otherwise load DuckDB every tick)
        try:
            dbt_runner.require_pipeline_target()
        except SettingsError as exc:
            raise dg.Failure(description=str(exc)) from None
        what = f"Dagster run {context.run_id[:8]}, step {context.op_def.name}"
        with locking.warehouse_lock(self.data_dir, what=what, log=context.log.info):
            try:
                yield
            except warehouse.WarehouseLockedError as exc:
                raise dg.Failure(description=str(exc)) from None


class PrivdomDbtCliResource(DbtCliResource):
    """dagster-dbt's dbt CLI resource, without the dbt adapter it builds in this process before every
    invocation. That adapter serves only `fetch_row_counts()` / `fetch_column_metadata()`, which privdom does
    not use (row counts and previews are read by privdom itself, after dbt exits: orchestration/preview.py),
    and building it (loading the project, the profile and the manifest again) cost ~1.7 s per dbt step, about
    5 s per run. dagster-dbt runs without an adapter by design when there is none (the Fusion engine)."""

    def _initialize_dbt_core_adapter(self, args):  # noqa: ANN001, ANN202 - dagster-dbt's hook
        return None

    def cli(self, args, **kwargs):  # noqa: ANN001, ANN003, ANN201 - dagster-dbt's signature
        """dbt as `command_executable()` runs it at the time of the command: during `privdom run`, the warm
        server's client (orchestration/warm.py). The resource's config names the installed dbt, which does not
        change: the client lives in a temporary directory of its own each run, and as the configured value it
        made every run's job and execution-plan snapshots new ones (~21 KB a run in Dagster's runs.db, which
        deleting runs never frees; long-horizon review)."""
        executable = str(command_executable())
        if executable != self.dbt_executable and Path(self.dbt_executable) == dbt_executable():
            return DbtCliResource.cli(self.model_copy(update={"dbt_executable": executable}), args, **kwargs)
        return super().cli(args, **kwargs)

    @cached_property
    def _cli_version(self) -> Version:
        """dagster-dbt asks the dbt executable for its version (`dbt --version`, a process that imports dbt:
        ~2.6 s once per run) to tell dbt Core from Fusion. The dbt next to this interpreter is the installed
        dbt-core distribution, whose version the package metadata gives at once (as for the warm server's client,
        which runs that dbt: orchestration/warm.py); any other executable is asked as dagster-dbt asks it."""
        ours = dbt_executable()
        if ours.is_absolute() and Path(self.dbt_executable) in (ours, command_executable()):
            return Version(importlib.metadata.version("dbt-core"))
        return DbtCliResource._cli_version.func(self)  # ty: ignore[unresolved-attribute]


def current_settings() -> Settings:
    settings = load_settings(resolve_data_dir())
    apply_dbt_environment(settings)
    return settings


@dg.definitions
def resources() -> dg.Definitions:
    settings = current_settings()
    return dg.Definitions(
        resources={
            "privdom": PrivdomResource(data_dir=str(settings.data_dir)),
            "dbt": PrivdomDbtCliResource(
                project_dir=str(DBT_PROJECT_DIR),
                profiles_dir=str(DBT_PROJECT_DIR),
                target=DBT_TARGET,
                dbt_executable=str(dbt_executable()),  # the warm client in its place at run time: cli() above
            ),
        }
    )
