"""The code location: everything under orchestration/defs/ is autoloaded."""

from pathlib import Path

import dagster as dg


def build_definitions() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
