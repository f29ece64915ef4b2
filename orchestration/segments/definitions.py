"""Segment definitions as data: load, validate, and compile a rule to SQL (SPEC §5).

A definition is a name, a version, a purpose, a campaign and a rule. Rules are structured conditions
(column, operator, value) on a whitelist of `marts.dim_customers` columns; they compile to SQL built only
from whitelisted identifiers and fixed operator text, with every value a bound parameter, so nothing a user
writes becomes SQL text. Names are restricted to lower-case identifiers, which also makes them safe as
folder names under the exports directory.

Sources, later wins for the same name: the shipped defaults (defaults.toml), then `[segments.<name>]` in
`$PRIVDOM_HOME/privdom.toml`, then `[segments.<name>]` in files `$PRIVDOM_HOME/segments/*.toml`. A user
definition may replace a default; defining one name in two user places is an error.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestration.settings import NOT_UTF8, read_settings_text

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
SEGMENTS_DIR_NAME = "segments"  # $PRIVDOM_HOME/segments/*.toml

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}")
# the other files of an export folder (orchestration/segments/exports.py): a segment of these names would
# overwrite them
RESERVED_NAMES = frozenset({"adds", "removes"})
FORMATS = ("csv", "parquet", "jsonl")
MAX_DAYS = 36_500
MAX_RULE_DEPTH = 4
MAX_LIST_VALUES = 1_000

CHANNELS = ("official_account", "wecom", "community_group", "mini_program", "live_stream", "offline_store")
RFM_SEGMENTS = (
    "Champions", "Loyal", "Potential Loyalist", "New", "Promising", "Need Attention", "About to Sleep",
    "At Risk", "Cannot Lose Them", "Hibernating", "Lost", "No Purchase",
)
LIFECYCLE_STAGES = ("new", "active", "at_risk", "dormant", "churned")


@dataclass(frozen=True)
class Column:
    kind: str  # int | decimal | bool | text | timestamp
    allowed: tuple[str, ...] | None = None  # accepted values of a text column, when it has a closed set
    # a text column holding a sorted, comma-separated list: `contains` / `not_contains` one of these values
    items: tuple[str, ...] | None = None


RELATIONSHIPS = ("community_group", "member", "official_account", "wecom")  # reachable_channels' items (SPEC §4)


# The dim_customers columns a rule may use, and the columns that explain membership in every export row (in
# this order). Identifiers (openid, unionid, member id, phones) are deliberately absent: a segment selects on
# behaviour, and contact fields travel in their own columns.
COLUMNS: dict[str, Column] = {
    "acquired_at": Column("timestamp"),
    "acquisition_channel": Column("text", CHANNELS + ("referral", "unknown")),
    "acquisition_campaign": Column("text"),
    "first_paid_at": Column("timestamp"),
    "last_paid_at": Column("timestamp"),
    "last_activity_at": Column("timestamp"),
    "paid_orders": Column("int"),
    "net_revenue": Column("decimal"),
    "points_redeemed": Column("int"),
    "reachable_channels": Column("text", items=RELATIONSHIPS),
    "is_member": Column("bool"),
    "is_activated": Column("bool"),
    "is_retained": Column("bool"),
    "is_repurchased": Column("bool"),
    "is_referrer": Column("bool"),
    "customers_referred": Column("int"),
    "referrals_converted": Column("int"),
    "referrals_converted_12m": Column("int"),
    "r_score": Column("int"),
    "f_score": Column("int"),
    "m_score": Column("int"),
    "rfm_segment": Column("text", RFM_SEGMENTS),
    "lifecycle_stage": Column("text", LIFECYCLE_STAGES),
    # Allowed in rules, but suppression removes opted-out and unreachable customers whatever a rule says.
    "is_reachable": Column("bool"),
    "opted_out": Column("bool"),
}
EXPLAIN_COLUMNS = tuple(c for c in COLUMNS if c not in ("is_reachable", "opted_out"))

COMPARISONS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
OPERATORS_BY_KIND = {
    "int": ("eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "is_null", "not_null"),
    "decimal": ("eq", "ne", "gt", "gte", "lt", "lte", "between", "is_null", "not_null"),
    "bool": ("eq", "ne", "is_null", "not_null"),
    "text": ("eq", "ne", "in", "not_in", "is_null", "not_null"),
    "timestamp": ("within_last_days", "more_than_days_ago", "between_days_ago", "is_null", "not_null"),
}
# on a list column (reachable_channels = 'official_account,wecom'): one item among the list's, or not among them;
# `eq "wecom"` matched only customers reachable on WeCom alone (marketer review)
LIST_OPERATORS = ("contains", "not_contains")
DEFINITION_FIELDS = {"version", "purpose", "campaign", "rule", "enabled", "formats"}
CONDITION_FIELDS = {"column", "op", "value"}


class SegmentDefinitionError(ValueError):
    """One or more segment definitions are invalid; each line of the message names its segment and source."""


@dataclass(frozen=True)
class SegmentDefinition:
    name: str
    version: int
    purpose: str
    campaign: str
    rule: Any  # the validated rule, as data (JSON-able)
    source: str  # where it was defined
    formats: tuple[str, ...] | None = None  # None: the [exports] default
    enabled: bool = True
    sql: str = field(default="", compare=False)  # compiled condition, '?' placeholders
    params: tuple[Any, ...] = field(default=(), compare=False)

    @property
    def rule_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_columns_of(self.rule)))

    def rule_json(self) -> str:
        return json.dumps(self.rule, sort_keys=True, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = ("csv",)
    csv_bom: bool = True
    keep: int = 30  # complete exports kept per segment (older ones are removed, LATEST's never)
    warn_data_age_days: float = 2.0  # the data's end older than this against the wall clock: a warning only
    warn_source_lag_days: float = 7.0  # a source's newest row older than this against the data's end: a warning only


def _columns_of(rule: Any) -> list[str]:
    if isinstance(rule, dict) and "column" in rule:
        return [rule["column"]]
    if isinstance(rule, dict):
        return [c for part in next(iter(rule.values())) for c in _columns_of(part)]
    return [c for part in rule for c in _columns_of(part)]


# --------------------------------------------------------------------------------------------- validation


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, name: str, source: str, message: str) -> None:
        self.lines.append(f"segment {name!r} ({source}): {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise SegmentDefinitionError("invalid segment definitions:\n  " + "\n  ".join(self.lines))


class _AsWrittenDate(dt.date):
    def __repr__(self) -> str:
        return f"{self.isoformat()} (a date)"


class _AsWrittenDateTime(dt.datetime):
    def __repr__(self) -> str:
        return f"{self.isoformat()} (a date and time)"


class _AsWrittenTime(dt.time):
    def __repr__(self) -> str:
        return f"{self.isoformat()} (a time)"


def _as_written(value: Any) -> Any:
    """A rule with its TOML dates and times shown in messages as written, not as Python's repr (marketer review:
    "not datetime.date(2024, 6, 1)"); they stay dates and times, which no rule value may be."""
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_written(v) for v in value]
    if isinstance(value, dt.datetime):
        return _AsWrittenDateTime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                                  value.microsecond, value.tzinfo)
    if isinstance(value, dt.date):
        return _AsWrittenDate(value.year, value.month, value.day)
    if isinstance(value, dt.time):
        return _AsWrittenTime(value.hour, value.minute, value.second, value.microsecond, value.tzinfo)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def operators_of(spec: Column) -> tuple[str, ...]:
    """The operators a rule may use on a column of this kind (a list column also takes contains, not_contains)."""
    return OPERATORS_BY_KIND[spec.kind] + (LIST_OPERATORS if spec.items else ())


def _check_value(column: str, spec: Column, op: str, value: Any) -> str | None:
    """None when `value` suits `op` on `column`, else what is wrong with it."""
    if op in LIST_OPERATORS:
        if not isinstance(value, str) or value not in (spec.items or ()):
            return f"{op!r} on {column!r} takes one of {', '.join(spec.items or ())}, not {value!r}"
        return None
    if op in ("is_null", "not_null"):
        return None if value in (None, True) else f"operator {op!r} takes no value (or true)"
    if value is None:
        return f"operator {op!r} on {column!r} needs a value"
    if op in ("within_last_days", "more_than_days_ago"):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DAYS:
            return f"{op!r} on {column!r} needs a whole number of days between 0 and {MAX_DAYS}, not {value!r}"
        return None
    if op == "between_days_ago":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_DAYS for v in value)
            or value[0] > value[1]
        ):
            return f"'between_days_ago' on {column!r} needs [fewer_days, more_days], whole days from 0 to {MAX_DAYS}, not {value!r}"
        return None
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            return f"'between' on {column!r} needs [low, high], not {value!r}"
        problems = [_check_scalar(column, spec, v) for v in value]
        if any(problems):
            return next(p for p in problems if p)
        return None if value[0] <= value[1] else f"'between' on {column!r}: low {value[0]!r} is above high {value[1]!r}"
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or len(value) > MAX_LIST_VALUES:
            return f"{op!r} on {column!r} needs a list of 1 to {MAX_LIST_VALUES} values, not {value!r}"
        return next((p for p in (_check_scalar(column, spec, v) for v in value) if p), None)
    return _check_scalar(column, spec, value)


def _check_scalar(column: str, spec: Column, value: Any) -> str | None:
    if spec.kind == "bool":
        return None if isinstance(value, bool) else f"{column!r} is true/false, not {value!r}"
    if spec.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        hint = " (write it without quotes)" if isinstance(value, str) and value.strip().lstrip("-").isdigit() else ""
        return None if ok else f"{column!r} is a whole number, not {value!r}{hint}"
    if spec.kind == "decimal":
        if not _is_number(value):
            return f"{column!r} is a number, not {value!r}"
        # money has cents: 99.999 was rounded to 100.00 without a word, and left out a customer at exactly
        # 100.00 (marketer review)
        if not math.isfinite(value) or abs(value) >= 1e16:
            return f"{column!r} is money below 10^16, not {value!r}"
        if isinstance(value, float) and abs(round(value, 2) - value) > 1e-9:
            return f"{column!r} is money with at most 2 decimal places, not {value!r}"
        return None
    if spec.kind == "text":
        if not isinstance(value, str):
            return f"{column!r} is text, not {value!r}"
        if spec.allowed is not None and value not in spec.allowed:
            return f"{value!r} is not a value of {column!r}; allowed: {', '.join(spec.allowed)}"
        return None
    return f"{column!r} takes a time operator"


def _validate_rule(rule: Any, name: str, source: str, problems: _Problems, depth: int = 0) -> Any:
    """The rule normalised to {'all'|'any': [...]} / condition dicts, or None when invalid (problems noted)."""
    if depth > MAX_RULE_DEPTH:
        problems.add(name, source, f"rule nests deeper than {MAX_RULE_DEPTH} levels")
        return None
    if isinstance(rule, list):
        rule = {"all": rule}
    if not isinstance(rule, dict):
        problems.add(name, source, f"a rule is a list of conditions or {{all = [...]}} / {{any = [...]}}, not {rule!r}")
        return None
    if set(rule) in ({"all"}, {"any"}):
        (kind, parts), = rule.items()
        if not isinstance(parts, list) or not parts:
            problems.add(name, source, f"{kind!r} needs a non-empty list of conditions")
            return None
        out = [_validate_rule(p, name, source, problems, depth + 1) for p in parts]
        return None if any(p is None for p in out) else {kind: out}
    unknown = set(rule) - CONDITION_FIELDS
    if unknown or "column" not in rule or "op" not in rule:
        problems.add(
            name, source,
            f"a condition has the fields column, op and value (or is {{ any = [...] }} or {{ all = [...] }} of "
            f"conditions); got {sorted(map(str, rule))}",
        )
        return None
    column, op, value = rule["column"], rule["op"], rule.get("value")
    if not isinstance(column, str) or column not in COLUMNS:
        problems.add(name, source, f"unknown column {column!r}; rules may use: {', '.join(COLUMNS)}")
        return None
    spec = COLUMNS[column]
    if not isinstance(op, str) or op not in operators_of(spec):
        problems.add(
            name, source,
            f"unknown operator {op!r} for {column!r} ({spec.kind}); use one of: {', '.join(operators_of(spec))}",
        )
        return None
    message = _check_value(column, spec, op, value)
    if message:
        problems.add(name, source, f"bad value: {message}")
        return None
    out = {"column": column, "op": op}
    if op not in ("is_null", "not_null"):
        out["value"] = value
    return out


def _validate_definition(name: str, raw: Any, source: str, problems: _Problems) -> SegmentDefinition | None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        problems.add(
            str(name), source,
            "a segment name is 1-63 lower-case letters, digits and '_', starting with a letter "
            "(it names the export folder, so no '/', '.' or spaces)",
        )
        return None
    if name in RESERVED_NAMES:
        problems.add(
            name, source,
            f"{name!r} is reserved: an export folder holds <segment>.<format>, adds.<format> and removes.<format>, "
            "so a segment cannot be called adds or removes",
        )
        return None
    if not isinstance(raw, Mapping):
        problems.add(name, source, "a definition is a table with version, purpose, campaign and rule")
        return None
    count = len(problems.lines)
    unknown = set(raw) - DEFINITION_FIELDS
    if unknown:
        problems.add(name, source, f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; known: {', '.join(sorted(DEFINITION_FIELDS))}")
    version = raw.get("version")
    if version is None:
        problems.add(name, source, "version is missing: a whole number ≥ 1 (raise it when the rule changes)")
    elif not isinstance(version, int) or isinstance(version, bool) or version < 1:
        problems.add(name, source, f"version must be a whole number ≥ 1, not {version!r}")
    purpose = raw.get("purpose")
    if not isinstance(purpose, str) or not purpose.strip():
        problems.add(name, source, "purpose must be a non-empty text saying who the segment is for")
    campaign = raw.get("campaign", "")
    if not isinstance(campaign, str):
        problems.add(name, source, f"campaign must be text, not {campaign!r}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.add(name, source, f"enabled must be true or false, not {enabled!r}")
    seg_formats = raw.get("formats")
    if seg_formats is not None and (
        not isinstance(seg_formats, list) or not seg_formats or any(f not in FORMATS for f in seg_formats)
    ):
        problems.add(name, source, f"formats must be a non-empty list of {', '.join(FORMATS)}, not {seg_formats!r}")
    if "rule" not in raw:
        problems.add(name, source, "a definition needs a rule")
        rule = None
    else:
        rule = _validate_rule(_as_written(raw["rule"]), name, source, problems)
    if len(problems.lines) > count:
        return None
    sql, params = compile_rule(rule)
    return SegmentDefinition(
        name=name,
        version=version,
        purpose=purpose.strip(),
        campaign=campaign,
        rule=rule,
        source=source,
        formats=tuple(dict.fromkeys(seg_formats)) if seg_formats else None,
        enabled=enabled,
        sql=sql,
        params=params,
    )


# ---------------------------------------------------------------------------------------------- compiling


def compile_rule(rule: Any, alias: str = "d") -> tuple[str, tuple[Any, ...]]:
    """SQL for a validated rule over `<alias>` (a dim_customers row) with '?' placeholders, and its values.

    Only whitelisted column names and the fixed operator text below reach the SQL; the data's end is
    `<alias>.data_end_at`. A condition on a NULL value is false (each condition is wrapped in coalesce).
    """
    params: list[Any] = []

    def walk(node: Any) -> str:
        if "all" in node or "any" in node:
            (kind, parts), = node.items()
            joiner = " and " if kind == "all" else " or "
            return "(" + joiner.join(walk(p) for p in parts) + ")"
        column, op, value = node["column"], node["op"], node.get("value")
        if column not in COLUMNS:  # compile_rule is public: never trust an unvalidated rule
            raise SegmentDefinitionError(f"unknown column {column!r}")
        ident = f'{alias}."{column}"'
        spec = COLUMNS[column]
        cast = {"int": "bigint", "decimal": "decimal(18, 2)", "bool": "boolean", "text": "varchar"}.get(spec.kind)
        day = f"to_microseconds(cast(? as bigint) * 86400000000)"
        if op == "is_null":
            return f"({ident} is null)"
        if op == "not_null":
            return f"({ident} is not null)"
        if op in COMPARISONS:
            params.append(value)
            return f"coalesce({ident} {COMPARISONS[op]} cast(? as {cast}), false)"
        if op == "between":
            params.extend(value)
            return f"coalesce({ident} between cast(? as {cast}) and cast(? as {cast}), false)"
        if op in LIST_OPERATORS:
            params.append(value)
            negate = "not " if op == "not_contains" else ""
            return f"coalesce({negate}list_contains(string_split({ident}, ','), cast(? as varchar)), false)"
        if op in ("in", "not_in"):
            params.append(list(value))
            negate = "not " if op == "not_in" else ""
            return f"coalesce({negate}list_contains(cast(? as {cast}[]), {ident}), false)"
        if op == "within_last_days":
            params.append(value)
            return f"coalesce({ident} >= {alias}.data_end_at - {day}, false)"
        if op == "more_than_days_ago":
            params.append(value)
            return f"coalesce({ident} < {alias}.data_end_at - {day}, false)"
        if op == "between_days_ago":
            fewer, more = value
            params.extend([more, fewer])
            return f"coalesce({ident} between {alias}.data_end_at - {day} and {alias}.data_end_at - {day}, false)"
        raise SegmentDefinitionError(f"unknown operator {op!r}")

    return walk(rule), tuple(params)


# ---------------------------------------------------------------------------------------------- loading


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_settings_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise SegmentDefinitionError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise SegmentDefinitionError(f"{path}: {NOT_UTF8}") from None


def export_options(sources: Mapping[str, Any]) -> ExportOptions:
    """The `[exports]` table of the settings file: default formats, CSV BOM, exports kept per segment."""
    raw = dict(sources.get("exports", {}))
    unknown = set(raw) - {"formats", "csv_bom", "keep", "warn_data_age_days", "warn_source_lag_days"}
    if unknown:
        raise SegmentDefinitionError(
            f"[exports]: unknown setting(s) {', '.join(sorted(unknown))}; known: csv_bom, formats, keep, "
            "warn_data_age_days, warn_source_lag_days"
        )
    formats = raw.get("formats", ["csv"])
    if not isinstance(formats, list) or not formats or any(f not in FORMATS for f in formats):
        raise SegmentDefinitionError(f"[exports] formats must be a non-empty list of {', '.join(FORMATS)}, not {formats!r}")
    csv_bom = raw.get("csv_bom", True)
    if not isinstance(csv_bom, bool):
        raise SegmentDefinitionError(f"[exports] csv_bom must be true or false, not {csv_bom!r}")
    keep = raw.get("keep", 30)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise SegmentDefinitionError(f"[exports] keep must be a whole number ≥ 1, not {keep!r}")
    days = {}
    for name, default in (("warn_data_age_days", 2.0), ("warn_source_lag_days", 7.0)):
        value = raw.get(name, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise SegmentDefinitionError(f"[exports] {name} must be a number of days ≥ 0, not {value!r}")
        days[name] = float(value)
    return ExportOptions(formats=tuple(dict.fromkeys(formats)), csv_bom=csv_bom, keep=keep, **days)


def parse_definitions(layers: list[tuple[str, Mapping[str, Any]]]) -> list[SegmentDefinition]:
    """Validate definitions given as (source, {name: table}) layers, later layers overriding earlier ones.

    The first layer is the shipped defaults; a name may appear in it and in one later layer (an override),
    never in two later layers. Every problem is reported at once, each naming its segment.
    """
    problems = _Problems()
    chosen: dict[str, tuple[str, Any]] = {}
    user_source: dict[str, str] = {}
    defaults = layers[0][1] if layers else {}
    for index, (source, tables) in enumerate(layers):
        if not isinstance(tables, Mapping):
            raise SegmentDefinitionError(f"{source}: [segments] must be a table of [segments.<name>] tables")
        for name, raw in tables.items():
            if index > 0:
                if name in user_source:
                    problems.add(str(name), source, f"duplicate segment name: already defined in {user_source[name]}")
                    continue
                user_source[name] = source
                if isinstance(raw, Mapping) and set(raw) == {"enabled"} and name in defaults:
                    # `[segments.<default>]` with only `enabled = false` switches a default off as it is
                    raw = {**defaults[name], "enabled": raw["enabled"]}
            chosen[name] = (source, raw)
    definitions = []
    for name, (source, raw) in chosen.items():
        definition = _validate_definition(name, raw, source, problems)
        if definition is not None:
            definitions.append(definition)
    problems.raise_if_any()
    return sorted(definitions, key=lambda d: d.name)


def load_segment_definitions(data_dir: Path, sources: Mapping[str, Any]) -> list[SegmentDefinition]:
    """Every segment definition for a data directory (defaults, privdom.toml, segments/*.toml), validated.

    `sources` is `Settings.sources` (the sub-tables of privdom.toml). Disabled definitions are included with
    enabled=False so the caller can show them; callers build only enabled ones.
    """
    layers: list[tuple[str, Mapping[str, Any]]] = [(f"{DEFAULTS_FILE.name} (shipped defaults)", _read_toml(DEFAULTS_FILE)["segments"])]
    if "segments" in sources:
        layers.append((str(Path(data_dir) / "privdom.toml"), sources["segments"]))
    segments_dir = Path(data_dir) / SEGMENTS_DIR_NAME
    if segments_dir.is_dir():
        # campaigns.toml.txt (Notepad's habit), CAMPAIGNS.TOML: meant as definitions, never read, and nothing said
        # (marketer review). Other files (a README, Thumbs.db, an archive/ folder) are left alone.
        near = sorted(p.name for p in segments_dir.iterdir()
                      if p.is_file() and p.suffix != ".toml" and re.search(r"\.(toml|tml)", p.name, re.IGNORECASE)
                      and not p.name.startswith((".", "_", "~$", "#")) and not p.name.endswith("~"))
        if near:
            raise SegmentDefinitionError(
                f"{segments_dir}: {', '.join(near)}: only files ending in .toml (lower case) are read here; rename "
                "them (or give them a name starting with '.' or '_' to keep them aside)")
        for path in sorted(segments_dir.glob("*.toml")):
            doc = _read_toml(path)
            unknown = set(doc) - {"segments"}
            if unknown:
                raise SegmentDefinitionError(f"{path}: only [segments.<name>] tables belong here, found {', '.join(sorted(unknown))}")
            layers.append((str(path), doc.get("segments", {})))
    return parse_definitions(layers)
