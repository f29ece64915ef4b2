"""Every setting of privdom, with its default, read once.

Precedence (highest first): environment variables ``PRIVDOM_<NAME>`` (upper case), then the settings file
``<data dir>/privdom.toml``, then the defaults below. Secrets (tokens, corp secrets) are read from the
environment only and never from the settings file.

The data directory is ``PRIVDOM_HOME`` (default ``./data``), always resolved to an absolute path because dbt
and DuckDB run from other working directories.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

SETTINGS_FILE_NAME = "privdom.toml"
TIMEZONE = "Asia/Shanghai"  # the business calendar of SPEC §2/§4; never the host's zone

REPO_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"


class SettingsError(ValueError):
    """A setting has a value privdom cannot use; the message names the setting and where it came from."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    # --- ingestion (SPEC §2) ---
    max_quarantine_share: float = 0.05
    placeholder_block_list: tuple[str, ...] = ()
    # --- identity (SPEC §3) ---
    identity_max_degree: int = 20
    # --- metric windows (SPEC §4), in days ---
    activation_window_days: int = 30
    retention_start_days: int = 30
    retention_end_days: int = 90
    repurchase_window_days: int = 90
    referral_window_days: int = 90
    triangle_baseline_month: str | None = None  # 'YYYY-MM' or None: first month with all three axes > 0
    # --- orchestration: first day of the daily (batch date) partitions, YYYY-MM-DD ---
    partitions_start_date: str = "2020-01-01"
    # --- engine: DuckDB's memory limit for every connection privdom and dbt open ("3GB", "512MB"; "" for
    # DuckDB's own default, 80 % of RAM). Above it DuckDB spills to warehouse.duckdb.tmp/ instead of growing.
    # 2.5GB, not more: DuckDB goes up to ~0.5 GB above its limit in some statements (the identity graph's
    # degree self-join), and the whole run must stay under 4 GiB at 1M customers (docs/performance.md).
    duckdb_memory_limit: str = "2.5GB"
    # --- generator defaults for `privdom demo` ---
    demo_customers: int = 3000
    demo_days: int = 240
    demo_seed: int = 42
    demo_dirty_rate: float = 0.01
    sources: dict[str, Any] = field(default_factory=dict, compare=False)

    # --- paths, all absolute ---
    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def bi_dir(self) -> Path:
        """The read-only copy for BI tools (orchestration/bi.py), replaced after each successful run."""
        return self.data_dir / "bi"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster"

    @property
    def settings_file(self) -> Path:
        return self.data_dir / SETTINGS_FILE_NAME

    @cached_property
    def placeholder_values(self) -> tuple[str, ...]:
        """Identifier values that never name a person (SPEC §3), lower-cased, built-ins first."""
        from orchestration.contract import BUILTIN_PLACEHOLDERS

        extra = tuple(v.strip().lower() for v in self.placeholder_block_list if v.strip())
        # a phone on the list in any spelling (`+86 138-0000-0000`) blocks that phone in every spelling: the data's
        # phones are compared once normalised, so the list holds the normalised form too
        from orchestration.ingest.rules import normalised_phone

        phones = tuple(p for p in map(normalised_phone, extra) if p is not None)
        return tuple(dict.fromkeys(BUILTIN_PLACEHOLDERS + extra + phones))

    def dbt_vars(self) -> dict[str, Any]:
        """The settings dbt models read, passed as ``--vars`` to every dbt invocation (parse and build alike)."""
        return {
            "placeholder_values": list(self.placeholder_values),
            "identity_max_degree": self.identity_max_degree,
            "activation_window_days": self.activation_window_days,
            "retention_start_days": self.retention_start_days,
            "retention_end_days": self.retention_end_days,
            "repurchase_window_days": self.repurchase_window_days,
            "referral_window_days": self.referral_window_days,
            "triangle_baseline_month": self.triangle_baseline_month or "",
        }

    def dbt_env(self) -> dict[str, str]:
        """Environment variables profiles.yml reads; identical for `dbt parse` and `dbt build`."""
        return {
            "PRIVDOM_WAREHOUSE": str(self.warehouse_path),
            "PRIVDOM_HOME": str(self.data_dir),
            # not PRIVDOM_DUCKDB_MEMORY_LIMIT: that is the setting's own override, read back by load_settings
            "PRIVDOM_DBT_DUCKDB_MEMORY_LIMIT": self.duckdb_memory_limit or "80%",
        }


# privdom generate's limits (orchestration/generate): a dirty rate from 0 to below this, at least a customer and a day
MAX_DIRTY_RATE = 0.5

# the tables of privdom.toml, each read by its own module: segment definitions, export options, destinations
SETTINGS_TABLES = ("segments", "exports", "destinations")
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Settings)}
_TUNABLE = [f.name for f in dataclasses.fields(Settings) if f.name not in ("data_dir", "sources")]


# Metric windows are at most 100 years; DuckDB's memory limit at least 256 MB.
MAX_WINDOW_DAYS = 36500
MIN_MEMORY_LIMIT_BYTES = 256 * 10**6


def _coerce(name: str, value: Any, origin: str) -> Any:
    kind = _FIELD_TYPES[name]
    try:
        if kind == "float":
            if isinstance(value, bool):  # TOML's true is 1.0 to float(): a share of 1 lets every delivery through
                raise ValueError("must be a number, not true or false")
            out = float(value)
            if not 0 <= out <= 1 and name.endswith(("share", "rate")):
                raise ValueError("must be between 0 and 1")
            if name == "demo_dirty_rate" and not out < MAX_DIRTY_RATE:
                raise ValueError(f"must be below {MAX_DIRTY_RATE}, as privdom generate's --dirty-rate")
            return out
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("must be a whole number")
            out = int(value)
            if out < 0:
                raise ValueError("must not be negative")
            if name in ("demo_customers", "demo_days") and out < 1:
                raise ValueError("must be 1 or more")
            if name.endswith("_window_days") or name in ("retention_start_days", "retention_end_days"):
                if out > MAX_WINDOW_DAYS:  # dbt computes with microseconds: 1e9 days overflowed INT64 mid-build
                    raise ValueError(f"must be at most {MAX_WINDOW_DAYS} days (100 years)")
            return out
        if kind == "tuple[str, ...]":
            if isinstance(value, str):
                value = [v for v in value.split(",")]
            return tuple(str(v) for v in value)
        if kind == "str | None":
            if value in (None, ""):
                return None
            text = str(value)
            if name == "triangle_baseline_month":
                import re

                if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
                    raise ValueError("must look like 2024-03")
            return text
        if name == "duckdb_memory_limit":
            text = str(value).strip()
            if not text:
                return text
            try:
                size = _bytes(text)
            except ValueError:
                raise ValueError('must be a size such as "3GB" or "512MB", or "" for DuckDB\'s default') from None
            if size < MIN_MEMORY_LIMIT_BYTES:  # "1KB": the warehouse is created, then nothing fits
                raise ValueError("must be at least 256MB")
            return text
        if name == "partitions_start_date":
            import datetime
            import re

            text = str(value)
            # YYYY-MM-DD only: Python's fromisoformat also takes 20240101 and 2024-W01-1, which Dagster's
            # partitions then refuse with a traceback that does not name the setting
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                raise ValueError("must be a date written YYYY-MM-DD")
            datetime.date.fromisoformat(text)
            return text
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name!r} from {origin}: {value!r} is not valid ({exc})") from None
    return value


_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def share_of_memory_limit(limit: str | None, fraction: float) -> str | None:
    """`fraction` of a duckdb_memory_limit ("2.5GB" → 0.25 → "625000000B", DuckDB's units: GB = 10^9 bytes,
    GiB = 2^30), for two DuckDB instances that run at once and together must stay within the setting. None
    or "" (DuckDB's default) stays as it is."""
    if not limit:
        return limit
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return f"{int(_bytes(limit) * fraction)}B"


def _bytes(size: str) -> int:
    """A memory size in DuckDB's units ("2.5GB", "512MiB") in bytes."""
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B)", size.strip(), flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a memory size: {size!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    raw = data_dir or os.environ.get("PRIVDOM_HOME") or "data"
    return Path(raw).expanduser().resolve()


# Characters a data directory's path may not hold, and why; with each, every run failed or worked on another
# directory's files:
# - `?` and `%`: Dagster's SQLite storage puts the path in a database URL: it cut it at `?` (its run tables went
#   to a file beside the data directory) and SQLAlchemy decodes `%41` as `A` (another directory's instance) (the
#   install-and-paths and diff reviews);
# - `#`: dbt-duckdb names the warehouse's catalog after the file name of its path read as a URL (urlparse), which
#   ends at `#`: `/srv/brand #2/warehouse.duckdb` became catalog "brand " and every run failed in dbt_staging,
#   after ingestion (the injection review);
# - a backslash: DuckDB opens a database file (connect, ATTACH) with every backslash read as '/': a run on
#   `/srv/brands/acme\old` loaded and exported on the warehouse of `/srv/brands/acme/old`, another data directory
#   (the injection review). Its readers and COPY take a backslash as it is, so landing files may have one.
_REFUSED_IN_PATH = (
    ("?%", "Dagster's storage cannot take"),
    ("#", "dbt-duckdb cannot take (it reads the warehouse's path as a URL)"),
    ("\\", "DuckDB reads as '/' when it opens the warehouse"),
)


def load_settings(data_dir: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings for a data directory: defaults < settings file < environment < explicit overrides."""
    root = resolve_data_dir(data_dir)
    if root.exists() and not root.is_dir():
        raise SettingsError(f"data directory {root} is a file, not a directory (--data-dir or PRIVDOM_HOME)")
    for characters, why in _REFUSED_IN_PATH:
        odd = [c for c in characters if c in str(root)]
        if odd:
            named = " and ".join("a backslash" if c == "\\" else f"a {c!r}" for c in odd)
            raise SettingsError(f"data directory {root} has {named} in its path, which {why}; choose another with "
                                "--data-dir or PRIVDOM_HOME")
    values: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    settings_file = root / SETTINGS_FILE_NAME
    if settings_file.exists():
        try:
            doc = tomllib.loads(read_settings_text(settings_file))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{settings_file}: not valid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise SettingsError(f"{settings_file}: {NOT_UTF8}") from None
        table = doc.get("privdom", doc)
        if table is not doc and set(doc) != {"privdom"}:
            raise SettingsError(
                f"{settings_file}: everything belongs under [privdom] once the file has that table; also found "
                f"{', '.join(sorted(set(doc) - {'privdom'}))} (or leave [privdom] out)"
            )
        for key, value in table.items():
            if isinstance(value, dict):
                if key not in SETTINGS_TABLES:
                    raise SettingsError(
                        f"{settings_file}: unknown table [{key}]; known tables: "
                        f"{', '.join(f'[{t}]' for t in SETTINGS_TABLES)} (a misspelled table would be ignored)"
                    )
                sources[key] = value  # sections such as [segments] or [destinations], read by their modules
                continue
            if key not in _TUNABLE:
                raise SettingsError(
                    f"{settings_file}: unknown setting {key!r}; known settings: {', '.join(sorted(_TUNABLE))}"
                )
            values[key] = _coerce(key, value, str(settings_file))
    origins = {key: str(settings_file) for key in values}
    for key in _TUNABLE:
        env_name = f"PRIVDOM_{key.upper()}"
        if env_name in os.environ:
            values[key] = _coerce(key, os.environ[env_name], f"${env_name}")
            origins[key] = f"${env_name}"
    for key, value in overrides.items():
        if key not in _TUNABLE:
            raise SettingsError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value, "the caller")
        origins[key] = "the caller"
    settings = Settings(data_dir=root, sources=sources, **values)
    if settings.retention_start_days >= settings.retention_end_days:
        where = lambda key: origins.get(key, "the default")  # noqa: E731
        raise SettingsError(
            f"retention_start_days ({settings.retention_start_days}, from {where('retention_start_days')}) must be "
            f"below retention_end_days ({settings.retention_end_days}, from {where('retention_end_days')}): "
            "retention is an order or engage event in [acquired_at + start, acquired_at + end)"
        )
    return settings


NOT_UTF8 = ("not UTF-8 text (saved as GBK / \"ANSI\" or as \"Unicode\" by Notepad?): save it as UTF-8 (in Notepad: "
            "Save as, Encoding UTF-8)")


def read_settings_text(path: Path) -> str:
    """A settings or segments file's text: UTF-8, with or without a BOM (Windows' Notepad writes one, and TOML
    then failed with "Invalid statement at line 1, column 1": marketer review). Raises UnicodeDecodeError."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # Notepad's "Unicode": UTF-16
        raise UnicodeDecodeError("utf-16", data[:2], 0, 2, "UTF-16 (Notepad's \"Unicode\")")
    return data.decode("utf-8-sig")


# PRIVDOM_* variables privdom reads besides the settings' own PRIVDOM_<SETTING> (dbt's profiles.yml reads the
# PRIVDOM_SPARK_* ones; PRIVDOM_WAREHOUSE and PRIVDOM_DBT_DUCKDB_MEMORY_LIMIT are set by privdom for dbt)
OTHER_ENVIRONMENT = frozenset({
    "PRIVDOM_HOME", "PRIVDOM_WAREHOUSE", "PRIVDOM_DBT_DUCKDB_MEMORY_LIMIT", "PRIVDOM_DBT_TARGET", "PRIVDOM_DBT_WARM",
    "PRIVDOM_GX_WARM", "PRIVDOM_PYTHON_EXIT", "PRIVDOM_SPARK_METHOD", "PRIVDOM_SPARK_HOST", "PRIVDOM_SPARK_PORT",
    "PRIVDOM_SPARK_USER", "PRIVDOM_SPARK_SCHEMA", "PRIVDOM_SPARK_THREADS", "PRIVDOM_UMASK",
    "PRIVDOM_WECOM_CORP_ID", "PRIVDOM_WECOM_CORP_SECRET",  # a WeCom destination's defaults (corp_id_env, corp_secret_env)
})


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def misspelled_environment(environ: os._Environ[str] | dict[str, str] | None = None, referenced: Iterable[str] = ()) -> list[str]:
    """A warning for each environment variable that looks like one privdom reads and is not: it is ignored, so
    a misspelled PRIVDOM_ACTIVATION_WINDOW_DAY would leave the default window in force without a word. Only a
    typo's distance from a known name counts (two letters changed, added, dropped or swapped; upper or lower
    case alike), and `referenced` (the variables the destinations name for their secrets) are known: secrets
    may be called PRIVDOM_<anything>, and PRIVDOM_SPARK_PASSWORD is no misspelled PRIVDOM_SPARK_PORT."""
    environ = os.environ if environ is None else environ
    known = sorted({f"PRIVDOM_{key.upper()}" for key in _TUNABLE} | OTHER_ENVIRONMENT | set(referenced))
    warnings = []
    for name in sorted(environ):
        if name in known or not name.upper().startswith("PRIVDOM"):
            continue
        distance, close = min((_edit_distance(name.upper(), k), k) for k in known)
        if distance <= 2:
            warnings.append(f"${name} is not a variable privdom reads, and is ignored; did you mean ${close}?")
    return warnings


def referenced_environment(settings: Settings) -> list[str]:
    """The environment variables the settings file's destinations name (`secret_env`, `corp_id_env`, …)."""
    names = []
    for table in (settings.sources.get("destinations") or {}).values():
        if isinstance(table, dict):
            names += [v for k, v in table.items() if k.endswith("_env") and isinstance(v, str)]
    return names


def settings_as_json(settings: Settings) -> str:
    """The tunable settings as one line of JSON (a run's log opens with it)."""
    return json.dumps({k: getattr(settings, k) for k in _TUNABLE}, default=str, ensure_ascii=False)
