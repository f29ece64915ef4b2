"""Segment exports (files, SPEC §5/§6) and syncs to destinations, one asset per segment / per destination.

Both run only after segments/segment_members passed its blocking checks (upstream checks, suppression): in a
run Dagster skips them when one fails; materialized on their own they look up the latest evaluations and
fail with the names of the checks that hold them back. Every export proves, on the files it wrote, that no
suppressed customer is in them (the blocking check `no_suppressed_customers`) before it is published.
"""


import dagster as dg
import duckdb

from orchestration.defs.resources import WAREHOUSE_POOL, PrivdomResource
from orchestration.defs.segments import (
    DESTINATIONS,
    EXPORT_OPTIONS,
    MEMBERS_GATES,
    MEMBERS_KEY,
    SEGMENT_DEFINITIONS,
    refuse_if_blocked,
    refuse_if_untested,
)
from orchestration.segments import (
    DestinationUnavailable,
    ExportError,
    client_for,
    export_freshness,
    export_segment,
    sync_segment,
)
from orchestration.segments.sync import sync_suppression_removes, unsynced_segments

CHECK_NO_SUPPRESSED = "no_suppressed_customers"
CHECK_FRESH = "fresh"
CHECK_ACCEPTED = "all_rows_accepted"


def export_key(segment: str) -> dg.AssetKey:
    return dg.AssetKey(["exports", segment])


def build_export_asset(definitions, options) -> dg.AssetsDefinition | None:
    enabled = [d for d in definitions if d.enabled]
    if not enabled:
        return None
    by_key = {export_key(d.name): d for d in enabled}

    @dg.multi_asset(
        name="segment_exports",
        group_name="exports",
        pool=WAREHOUSE_POOL,  # reads the warehouse: a DuckDB reader cannot open the file while a run writes it
        can_subset=True,
        specs=[
            dg.AssetSpec(
                key,
                deps=[MEMBERS_KEY],
                skippable=True,
                kinds={"python", *(d.formats or options.formats)},
                description=f"{d.purpose} Campaign: {d.campaign}. Files in exports/{d.name}/<export_id>/, newest in exports/{d.name}/LATEST.",
                metadata={"segment": d.name, "definition_version": d.version, "campaign": d.campaign, "rule": d.rule_json()},
            )
            for key, d in by_key.items()
        ],
        check_specs=[
            spec
            for key in by_key
            for spec in (
                dg.AssetCheckSpec(
                    CHECK_NO_SUPPRESSED,
                    asset=key,
                    blocking=True,
                    description="The files written hold no opted-out, unreachable or unknown customer and no clear phone, and their row counts are as planned; checked before the export is published.",
                ),
                dg.AssetCheckSpec(
                    CHECK_FRESH,
                    asset=key,
                    description="LATEST was built from the warehouse's current data end.",
                ),
            )
        ],
    )
    def segment_exports(context: dg.AssetExecutionContext, privdom: PrivdomResource):
        refuse_if_blocked(context, MEMBERS_GATES, "exports")
        settings = privdom.settings()
        not_written: list[str] = []  # segments whose files could not be written (the file system said no)
        # the writer lock also keeps two runs from publishing the same segment's LATEST at once
        outputs: list = []  # yielded once the connection and the lock are let go (as in the dbt steps: Dagster
        # raises a Ctrl-C where the step is resumed and never closes this generator, which kept both)
        with privdom.writer(context), privdom.connect(read_only=True) as con:
            refuse_if_untested(context, con, "exports")
            for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
                d = by_key[key]
                try:
                    result = export_segment(con, settings.exports_dir, d, options)
                except (ExportError, OSError, duckdb.IOException) as exc:
                    # each segment is published on its own: one that cannot be does not hold the others back (an
                    # OSError from Python's writes, an IOException from DuckDB's COPY: a full disk, a file too large)
                    if not isinstance(exc, ExportError):
                        not_written.append(f"{d.name}: {exc}")
                    context.log.error(f"export of {d.name} withheld: {exc}")
                    outputs.append(dg.AssetCheckResult(
                        asset_key=key, check_name=CHECK_NO_SUPPRESSED, passed=False,
                        severity=dg.AssetCheckSeverity.ERROR, description=f"not published: {exc}",
                    ))
                    try:
                        fresh = export_freshness(con, settings.exports_dir, d.name)
                    except (OSError, ValueError, KeyError) as unreadable:  # its folder is what failed
                        fresh = {"fresh": False, "latest": f"unreadable ({unreadable})", "export_data_end_at": None,
                                 "warehouse_data_end_at": None}
                    outputs.append(_freshness_check(key, fresh))
                    continue
                if result.prune_error:
                    context.log.warning(f"{d.name}: {result.prune_error}")
                outputs.append(dg.MaterializeResult(
                    asset_key=key,
                    metadata={
                        "dagster/row_count": result.rows,
                        "export_id": result.export_id,
                        "path": dg.MetadataValue.path(str(result.path)),
                        "adds": result.adds,
                        "removes": result.removes,
                        "previous_export_id": result.previous_export_id or "",
                        "unchanged": result.unchanged,
                        "data_end_at": result.manifest["data_end_at"] or "",
                        "computed_at": result.manifest["computed_at"] or "",
                    },
                ))
                outputs.append(dg.AssetCheckResult(
                    asset_key=key, check_name=CHECK_NO_SUPPRESSED, passed=True,
                    metadata={"files_verified": len(result.manifest["files"]), "rows": result.rows},
                ))
                outputs.append(_freshness_check(key, export_freshness(con, settings.exports_dir, d.name)))
        yield from outputs
        if not_written:  # the other segments are published; the run fails so that someone sees to the disk
            raise dg.Failure(
                description=f"{len(not_written)} segment export(s) could not be written, the others were published: "
                + "; ".join(not_written)
            )

    return segment_exports


def _freshness_check(key: dg.AssetKey, fresh: dict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CHECK_FRESH,
        passed=fresh["fresh"],
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if fresh["fresh"] else f"LATEST {fresh['latest']} has data end {fresh['export_data_end_at']}, the warehouse {fresh['warehouse_data_end_at']}",
        metadata={k: str(v) for k, v in fresh.items()},
    )


def build_sync_asset(destination, definitions) -> dg.AssetsDefinition:
    key = dg.AssetKey(["syncs", destination.name])
    versions = {d.name: d.version for d in definitions}

    @dg.asset(
        key=key,
        group_name="syncs",
        pool=WAREHOUSE_POOL,
        deps=[export_key(s) for s in destination.segments],
        kinds={"python", destination.type},
        description=(
            f"{destination.type} destination {destination.name!r} ({destination.mode} mode): sends the difference "
            f"between the members of {', '.join(destination.segments)} and what it last accepted; every row's outcome "
            "is in segments.sync_log, accepted rows in segments.sync_state."
        ),
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_ACCEPTED,
                asset=key,
                description="Every row sent was accepted. Failed rows are re-sent by the next sync (warning).",
            )
        ],
    )
    def _sync(context: dg.AssetExecutionContext, privdom: PrivdomResource):
        blockers = [*MEMBERS_GATES, *(dg.AssetCheckKey(export_key(s), CHECK_NO_SUPPRESSED) for s in destination.segments)]
        refuse_if_blocked(context, blockers, f"sync to {destination.name}")
        try:
            client = client_for(destination)
        except DestinationUnavailable as exc:
            raise dg.Failure(description=str(exc)) from None
        reports = []
        try:
            with privdom.writer(context), privdom.connect() as con:
                refuse_if_untested(context, con, f"sync to {destination.name}")
                for segment in destination.segments:
                    report = sync_segment(con, destination, client, segment, versions[segment], sync_run_id=f"{context.run_id}:{destination.name}:{segment}")
                    context.log.info(f"{destination.name} · {segment}: {report.to_metadata()}")
                    reports.append(report)
                unsynced = unsynced_segments(con, destination)
                # opted-out and unreachable customers are removed there all the same (SPEC §5)
                removed = sync_suppression_removes(con, destination, client, [s for s, _ in unsynced], context.run_id)
                reports += removed
                for (segment, held), report in zip(unsynced, removed):
                    left = held - report.accepted
                    context.log.warning(
                        f"{destination.name} still holds {left} customers of segment {segment!r}, which it no longer "
                        f"syncs ({report.accepted} opted-out or unreachable removed this run; such customers are always "
                        "removed). The others stay there: to clear them, list the segment again (defined and "
                        f"enabled) in the destination's `{'tags' if destination.type == 'wecom' else 'segments'}`, or "
                        "remove them at the destination (or its tag) and "
                        f"then, with no run going on, delete the rows of destination '{destination.name}' and segment "
                        f"'{segment}' from segments.sync_state and segments.sync_pending."
                    )
        finally:
            client.close()
        failed = sum(r.failed for r in reports)
        metadata = {
            "accepted": sum(r.accepted for r in reports),
            "failed": failed,
            "skipped": sum(r.skipped for r in reports),
            "requests": sum(r.requests for r in reports),
            "by_segment": dg.MetadataValue.json([r.to_metadata() for r in reports]),
        }
        errors = [r.error for r in reports if r.error]
        accepted_check = dg.AssetCheckResult(
            check_name=CHECK_ACCEPTED,
            passed=failed == 0,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{failed} rows not accepted; they are re-sent by the next sync" if failed else None,
            metadata={"failed": failed, "examples": [f for r in reports for f in r.failures][:10]},
        )
        if errors:  # the destination could not be used (credentials refused, a whole batch given up): not a sync
            yield accepted_check  # the rows' outcome still shows on the check
            raise dg.Failure(
                description=f"sync to {destination.name} stopped: {'; '.join(dict.fromkeys(errors))}. Every row's "
                "outcome is in segments.sync_log; the rows not accepted are sent again by the next sync.",
                metadata=metadata,
            )
        yield dg.MaterializeResult(metadata=metadata)
        yield accepted_check

    return _sync


export_asset = build_export_asset(SEGMENT_DEFINITIONS, EXPORT_OPTIONS)
sync_assets = [build_sync_asset(d, SEGMENT_DEFINITIONS) for d in DESTINATIONS]
