"""Segment membership (SPEC §5): segments/segment_definitions and segments/segment_members, with the checks
that gate every export and sync.

Definitions, export options and destinations are read and validated here, when the code location loads: a
bad definition stops the load with a message naming the segment.
"""


import datetime as dt

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster._core.storage.asset_check_execution_record import COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES

from orchestration import dbt as dbt_runner
from orchestration.defs.resources import WAREHOUSE_POOL, PrivdomResource, current_settings
from orchestration.segments import (
    build_membership,
    export_options,
    load_segment_definitions,
    parse_destinations,
    suppression_violations,
)
from orchestration.segments.membership import changed_without_new_version

DIM_CUSTOMERS = dg.AssetKey(["marts", "dim_customers"])
DEFINITIONS_KEY = dg.AssetKey(["segments", "segment_definitions"])
MEMBERS_KEY = dg.AssetKey(["segments", "segment_members"])
CHECK_UPSTREAM = "upstream_checks_passed"
CHECK_SUPPRESSION = "no_suppressed_members"
CHECK_NOT_EMPTY = "segments_not_empty"
CHECK_DATA_AGE = "source_data_age"
CHECK_VERSIONS = "rule_changes_have_new_versions"


# The data's end may be this far after the wall clock before it is warned of (a clock a little behind, a
# delivery stamped in another zone); beyond it a row is dated in the future.
FUTURE_DATA_END_DAYS = 1.0


def data_age_problem(age_days: float | None, warn_data_age_days: float) -> str | None:
    """What source_data_age warns of: a data end older than warn_data_age_days against the wall clock, or one more
    than FUTURE_DATA_END_DAYS after it. "Now" is the data's end (SPEC §4), so one row dated in the future, in a
    batch whose date is in the future too (no contract rule stops it), makes every customer lapsed and every
    segment counted back from it; and it hid the warning of old data. With no data loaded there is no data end:
    the check warns (it does not pass), and says so (it used to warn without a word)."""
    if age_days is None:
        return "no data loaded yet: the warehouse has no data end to compare with the wall clock"
    if age_days > warn_data_age_days:
        return (f"the data ends {age_days:.1f} days before now (warn above {warn_data_age_days}): "
                "are the sources still delivering?")
    if age_days < -FUTURE_DATA_END_DAYS:
        return (f"the data ends {-age_days:.1f} days after now: a row is dated in the future, and the data's end "
                "(\"now\" for recency, lifecycle and segments) is that row's time; find it with "
                "intermediate.int_data_end and the staged rows of that time (`privdom unload` takes its file out)")
    return None


# Each source's newest row, by the time column its staged rows are ordered by (the data's end is the latest of
# every timestamp, intermediate/int_data_end.sql)
SOURCE_ENDS = (("channel_events", "staging.stg_channel_events", "occurred_at"),
               ("orders", "staging.stg_orders__versions", "updated_at"),
               ("referrals", "staging.stg_referrals__versions", "updated_at"))


def source_ends(con) -> dict[str, dt.datetime]:
    """The newest row of each source that has rows (a source with none, or not built, is left out)."""
    from orchestration.warehouse import table_exists

    ends = {}
    for source, table, column in SOURCE_ENDS:
        if table_exists(con, table):
            (end,) = con.execute(f"select max({column}) from {table}").fetchone()
            if end is not None:
                ends[source] = end
    return ends


def source_lag_problem(ends: dict[str, dt.datetime], data_end: dt.datetime | None, warn_source_lag_days: float) -> str | None:
    """A source whose newest row is more than warn_source_lag_days before the data's end: it has stopped
    arriving while the others go on (the calendar review: orders ended 7.5 months before the channel events,
    and a champion became dormant and was exported to the win-back segment, with no word of it). "Now" is the
    data's end whichever source set it (SPEC §4), so recency, lifecycle and segments count its silence."""
    if data_end is None:
        return None
    behind = {source: (data_end - end).total_seconds() / 86400 for source, end in ends.items()}
    late = [f"{source} {days:.1f} days" for source, days in sorted(behind.items()) if days > warn_source_lag_days]
    if not late:
        return None
    return (f"a source's newest row is far before the data's end ({data_end.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC; warn above "
            f"{warn_source_lag_days:g} days): {', '.join(late)} before it. Has it stopped arriving? Recency, "
            "lifecycle and segments count from the data's end")


def load_segment_config():
    """(definitions, export options, destinations) of the current data directory, validated."""
    settings = current_settings()
    definitions = load_segment_definitions(settings.data_dir, settings.sources)
    options = export_options(settings.sources)
    enabled = [d for d in definitions if d.enabled]
    destinations = parse_destinations(settings.sources.get("destinations", {}), [d.name for d in enabled], str(settings.settings_file),
                                      switched_off=[d.name for d in definitions if not d.enabled])
    return definitions, options, destinations


def failed_upstream_checks(context: dg.AssetExecutionContext, asset_key: dg.AssetKey) -> list[str]:
    """Checks on any ancestor of `asset_key` whose latest evaluation failed at ERROR severity.

    The latest evaluation decides, whichever run made it: within `privdom run` that is this run's; when an
    export is materialized on its own, the last ingest's quarantine check still holds it back.
    """
    try:  # the code location's whole graph: runs launched from the UI or a schedule carry it
        graph = context.repository_def.asset_graph
    except Exception:  # in-process runs (privdom run) have none; their job is the whole graph
        graph = context.job_def.asset_layer.asset_graph
    keys = graph.get_ancestor_asset_keys(asset_key)
    checks = sorted(graph.get_check_keys_for_assets(keys), key=lambda k: (k.asset_key.to_user_string(), k.name))
    latest = _latest_failures(context.instance, checks)
    # The ingest checks judge one run's new rows (SPEC §2): a bad delivery loaded by a run that had no exports to
    # hold back (the raw assets materialized alone: a backfill of group:raw, the UI's Materialize) would otherwise
    # be exported by the next run, whose own check passes, without ever holding an export back. Such a failure
    # holds back the next evaluation of this gate, once.
    delivery_checks = [k for k in checks if k.asset_key.path[0] == "raw" and k not in latest]
    since = _last_evaluated_at(context.instance, dg.AssetCheckKey(asset_key, CHECK_UPSTREAM))
    return ([_named(k, record) for k, record in latest.items()]
            + _failed_at_error_since(context.instance, delivery_checks, since))


def _failed_at_error(instance: dg.DagsterInstance, check_keys: list[dg.AssetCheckKey]) -> list[str]:
    """The checks among `check_keys` whose latest evaluation failed at ERROR severity, as "asset:check (why;
    run id)". Only evaluations count: a run that planned a check and has not evaluated it yet (queued, or
    running now) or never will (it failed or skipped that step first) leaves a PLANNED record, newer than the
    last evaluation, that says nothing about the data."""
    return [_named(check_key, record) for check_key, record in _latest_failures(instance, check_keys).items()]


def _latest_failures(instance: dg.DagsterInstance, check_keys: list[dg.AssetCheckKey]) -> dict:
    """{check key: its latest execution record} for the checks among `check_keys` whose latest evaluation failed
    at ERROR severity, in the order of `check_keys`."""
    latest = {}
    for check_key in check_keys:
        history = instance.event_log_storage.get_asset_check_execution_history(
            check_key, limit=1, status=COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES)
        if history and _failed_at_error_in(history[0]):
            latest[check_key] = history[0]
    return latest


def _failed_at_error_in(record) -> bool:
    """Whether an execution record of a check holds an evaluation that failed at ERROR severity."""
    evaluation = record.evaluation
    return (isinstance(evaluation, AssetCheckEvaluation) and not evaluation.passed
            and evaluation.severity == dg.AssetCheckSeverity.ERROR)


def _named(check_key: dg.AssetCheckKey, record, note: str = "") -> str:
    """A failed check as the gate names it: "asset:check (why; run id)"."""
    reason = record.evaluation.description or "failed"
    return f"{check_key.asset_key.to_user_string()}:{check_key.name} ({reason}; run {record.run_id[:8]}{note})"


def _last_evaluated_at(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey) -> float | None:
    """When `check_key` was last evaluated (passed or failed), or None if never."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=1, status=COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES)
    return history[0].event.timestamp if history and history[0].event else None


def _failed_at_error_since(instance: dg.DagsterInstance, check_keys: list[dg.AssetCheckKey], since: float | None,
                           scan: int = 100) -> list[str]:
    """The checks among `check_keys` with an evaluation failed at ERROR severity after `since` (any, if None),
    as _failed_at_error names them, the newest such failure of each, among the last `scan` evaluations.

    The history is in the order the checks were *planned* (a row is written when a run plans a check and
    updated when it evaluates it), not evaluated: a raw-only run planned first may evaluate after a whole run's
    gate (diff review), so an evaluation at or before `since` is passed over, not taken as the end."""
    failed = []
    for check_key in check_keys:
        for record in instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=scan, status=COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES):
            if record.event is None or (since is not None and record.event.timestamp <= since):
                continue
            if _failed_at_error_in(record):
                failed.append(_named(check_key, record, ", which exported nothing: the next export waits once"))
                break
    return failed


def refuse_if_untested(context: dg.AssetExecutionContext, con, what: str) -> None:
    """Raise a Failure while a dbt build of another run (or `privdom dbt`) has replaced tables whose tests
    Dagster has not recorded (dbt_runner.UNTESTED_TABLE): the members' gate of the run before still passes, and
    an export, sync or BI copy materialized alone would publish from them."""
    untested = dbt_runner.untested_builds(con, context.run_id)
    if untested:
        raise dg.Failure(
            description=f"{what} withheld: tables were rebuilt without their tests reporting: " + "; ".join(untested),
            metadata={"untested_builds": untested},
        )


def refuse_if_blocked(context: dg.AssetExecutionContext, check_keys: list[dg.AssetCheckKey], what: str) -> None:
    """Raise a Failure naming the blocking checks whose latest evaluation failed (shown on the step in the UI).

    The keys are named explicitly: a run of a subset (an export materialized on its own) does not carry the
    other assets' checks in its job's graph, but their latest evaluations still hold.
    """
    failed = _failed_at_error(context.instance, check_keys)
    if failed:
        raise dg.Failure(
            description=f"{what} withheld: a blocking check failed upstream: " + "; ".join(failed),
            metadata={"failed_checks": failed},
        )


MEMBERS_GATES = [dg.AssetCheckKey(MEMBERS_KEY, CHECK_UPSTREAM), dg.AssetCheckKey(MEMBERS_KEY, CHECK_SUPPRESSION)]


def _members_table(summaries) -> str:
    lines = ["| segment | version | matched by rule | suppressed | members |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {s.segment} | {s.version} | {s.matched} | {s.suppressed} | {s.members} |" for s in summaries]
    return "\n".join(lines)


def remove_suppressed_while_held_back(context, con, destinations, definitions) -> dict[str, int]:
    """When exports and syncs wait (a blocking check failed), each destination still has its held customers who
    opted out or became unreachable removed, in every segment it holds (SPEC §5: "always removed"; the privacy
    review had an opt-out delivery with one bad row keep four opted-out customers tagged and held until the next
    passing run). Only removes, only of suppressed customers: the other changes wait with the exports. A
    destination that cannot be used is a warning here; the rows stay due. {destination: customers removed}."""
    from orchestration.segments import DestinationUnavailable, client_for
    from orchestration.segments.sync import sync_suppression_removes, unsynced_segments

    versions = {d.name: d.version for d in definitions}
    removed: dict[str, int] = {}
    for destination in destinations:
        try:
            client = client_for(destination)
        except DestinationUnavailable as exc:
            context.log.warning(f"{destination.name}: opted-out and unreachable customers not removed while exports wait: {exc}")
            continue
        try:
            segments = [*destination.segments, *(s for s, _ in unsynced_segments(con, destination))]
            for segment, report in zip(segments, sync_suppression_removes(
                    con, destination, client, segments, f"{context.run_id}:held-back", versions)):
                removed[destination.name] = removed.get(destination.name, 0) + report.accepted
                if report.error or report.failed:
                    context.log.warning(f"{destination.name} · {segment}: removing opted-out and unreachable customers while "
                                        f"exports wait: {report.failed} not accepted{': ' + report.error if report.error else ''}")
        finally:
            client.close()
    return removed


def build_membership_asset(definitions, options, destinations=()) -> dg.AssetsDefinition:
    """The membership asset for these (validated) definitions and destinations; tests build it with their own."""

    @dg.multi_asset(
        name="segment_membership",
        group_name="segments",
        pool=WAREHOUSE_POOL,
        specs=[
            dg.AssetSpec(
                DEFINITIONS_KEY,
                deps=[DIM_CUSTOMERS],
                kinds={"duckdb", "python"},
                description="One row per segment definition (defaults, privdom.toml, segments/*.toml): version, purpose, campaign, rule, where it was defined, and how many customers it matched, suppressed and kept.",
            ),
            dg.AssetSpec(
                MEMBERS_KEY,
                deps=[DIM_CUSTOMERS],
                kinds={"duckdb", "python"},
                description=(
                    "Members of every enabled segment, from marts.dim_customers: contact channel and handle, phone "
                    "SHA-256, WeCom ids and the columns that explain membership. Opted-out and unreachable customers "
                    "are never members, whatever a rule says."
                ),
            ),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_UPSTREAM,
                asset=MEMBERS_KEY,
                blocking=True,
                description="No blocking (ERROR) check upstream failed at its latest evaluation (e.g. a raw quarantine share above max_quarantine_share). Exports and syncs wait otherwise.",
            ),
            dg.AssetCheckSpec(
                CHECK_SUPPRESSION,
                asset=MEMBERS_KEY,
                blocking=True,
                description="No member is opted out, unreachable or missing from marts.dim_customers (re-checked against dim_customers). Exports and syncs wait otherwise.",
            ),
            dg.AssetCheckSpec(CHECK_NOT_EMPTY, asset=MEMBERS_KEY, description="Warns when an enabled segment has no members."),
            dg.AssetCheckSpec(CHECK_VERSIONS, asset=MEMBERS_KEY, description="Warns when a segment's rule changed since the last build and its version did not: exports, manifests and syncs would carry one version for two rules."),
            dg.AssetCheckSpec(
                CHECK_DATA_AGE,
                asset=MEMBERS_KEY,
                description="Warns when the data's end is older than [exports] warn_data_age_days against the wall clock or more than a day after it, or when a source's newest row is more than [exports] warn_source_lag_days before the data's end: a warning about the sources, never a reason to block.",
            ),
        ],
    )
    def segment_membership(context: dg.AssetExecutionContext, privdom: PrivdomResource):
        failed_upstream = failed_upstream_checks(context, MEMBERS_KEY)
        computed_at = dt.datetime.now(dt.UTC)
        with privdom.writer(context), privdom.connect() as con:
            # tables a dbt build replaced before Dagster had their tests' evaluations (a run killed inside it)
            failed_upstream += dbt_runner.untested_builds(con, context.run_id)
            unversioned = changed_without_new_version(con, definitions)
            summaries = build_membership(con, definitions, computed_at)
            violations, examples = suppression_violations(con)
            data_end = con.execute("select max(data_end_at) from marts.dim_customers").fetchone()[0]
            ends = source_ends(con)
            held_back_removes = (remove_suppressed_while_held_back(context, con, destinations, definitions)
                                 if (failed_upstream or violations) and destinations else {})
        yield dg.MaterializeResult(
            asset_key=DEFINITIONS_KEY,
            metadata={"segments": len(definitions), "enabled": sum(d.enabled for d in definitions), "dagster/row_count": len(definitions)},
        )
        yield dg.MaterializeResult(
            asset_key=MEMBERS_KEY,
            metadata={
                "dagster/row_count": sum(s.members for s in summaries),
                "computed_at": computed_at.isoformat(),
                "data_end_at": data_end.isoformat() if data_end else "",
                "segments": dg.MetadataValue.md(_members_table(summaries)),
                **({"removed_while_exports_wait": dg.MetadataValue.json(held_back_removes)} if held_back_removes else {}),
            },
        )
        yield dg.AssetCheckResult(
            asset_key=MEMBERS_KEY,
            check_name=CHECK_UPSTREAM,
            passed=not failed_upstream,
            severity=dg.AssetCheckSeverity.ERROR,
            description=("Exports and syncs wait: " + "; ".join(failed_upstream)) if failed_upstream else None,
            metadata={"failed_checks": failed_upstream},
        )
        yield dg.AssetCheckResult(
            asset_key=MEMBERS_KEY,
            check_name=CHECK_SUPPRESSION,
            passed=violations == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{violations} members are opted out, unreachable or unknown: exports and syncs wait" if violations else None,
            metadata={"violations": violations, "examples": [" ".join(e) for e in examples]},
        )
        yield dg.AssetCheckResult(
            asset_key=MEMBERS_KEY,
            check_name=CHECK_VERSIONS,
            passed=not unversioned,
            severity=dg.AssetCheckSeverity.WARN,
            description=(f"the rule of {', '.join(unversioned)} changed and its version did not: raise `version` so that "
                         "exports, manifests and syncs tell the two rules apart") if unversioned else None,
            metadata={"segments": unversioned},
        )
        empty = [s.segment for s in summaries if s.members == 0]
        yield dg.AssetCheckResult(
            asset_key=MEMBERS_KEY,
            check_name=CHECK_NOT_EMPTY,
            passed=not empty,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"empty segments: {', '.join(empty)}" if empty else None,
            metadata={"empty_segments": empty},
        )
        age_days = (computed_at - data_end).total_seconds() / 86400 if data_end else None
        problems = [p for p in (data_age_problem(age_days, options.warn_data_age_days),
                                source_lag_problem(ends, data_end, options.warn_source_lag_days)) if p]
        yield dg.AssetCheckResult(
            asset_key=MEMBERS_KEY,
            check_name=CHECK_DATA_AGE,
            passed=not problems,  # no data end is a problem too (data_age_problem)
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(problems) or None,
            metadata={"data_age_days": round(age_days, 2) if age_days is not None else None,
                      "warn_data_age_days": options.warn_data_age_days,
                      "source_ends": {source: end.isoformat() for source, end in ends.items()},
                      "warn_source_lag_days": options.warn_source_lag_days},
        )

    return segment_membership


# Read and validated when the code location loads: a bad definition stops the load, naming the segment.
SEGMENT_DEFINITIONS, EXPORT_OPTIONS, DESTINATIONS = load_segment_config()
membership_asset = build_membership_asset(SEGMENT_DEFINITIONS, EXPORT_OPTIONS, DESTINATIONS)
