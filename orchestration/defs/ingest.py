"""One ingest asset per source (SPEC §2): new landing files → raw.<source>, with quarantine and the ledger.

The contract checks run inside the asset, on the run's new rows, because that is where those rows are at
hand: the Great Expectations suite on the rows as delivered, the ledger arithmetic, and the quarantine
share. They show as asset checks of raw/<source>.
"""


import dagster as dg

from orchestration import validation_worker as gx_worker
from orchestration.contract import CONTRACTS, SOURCES
from orchestration.defs.partitions import BATCH_DATE_PARTITIONS, batch_date_range, partition_keys_of
from orchestration.defs.resources import WAREHOUSE_POOL, PrivdomResource
from orchestration.ingest import SourceIngestReport, ingest_source
from orchestration.ingest.files import shown as shown_path
from orchestration.ingest.files import stray_files
from orchestration.landing import SETTLED_BEFORE_TAG
from orchestration.preview import markdown_cell
from orchestration.settings import share_of_memory_limit

CHECK_ROWS_RECONCILE = "rows_read_equals_loaded_plus_quarantined"
CHECK_QUARANTINE_SHARE = "quarantine_share"
CHECK_CONTRACT = "contract_expectations"
CHECK_FILES_READABLE = "files_readable"
CHECK_COLUMNS = "columns_match_contract"
CHECK_OPT_OUTS_QUARANTINED = "opt_outs_quarantined"  # channel_events only

# This run's quarantined channel events that were opt-outs, by their delivered event_type (a malformed record,
# whose fields cannot be told apart, by its text). Such a customer stays contactable until the row is delivered
# again, corrected.
_QUARANTINED_OPT_OUTS = """
select count(*), list(file_path || ':' || row_number order by file_path, row_number)[1:5]
from raw.quarantine
where source = 'channel_events' and load_id = ?
  and case when not json_valid(original_row) then original_row ilike '%opt_out%'
           when json_exists(original_row, '$.malformed_record')
           then json_extract_string(original_row, '$.malformed_record') ilike '%opt_out%'
           else coalesce(lower(trim(json_extract_string(original_row, '$.event_type'))) = 'opt_out', false) end
"""


def opt_outs_quarantined_check(con, load_id: str) -> dg.AssetCheckResult:
    """WARN when opt-out events of this run were quarantined (privacy review: one with an empty channel was
    lost among the quarantine's counts, and its customer stayed in every segment and sync)."""
    count, where = con.execute(_QUARANTINED_OPT_OUTS, [load_id]).fetchone()
    where = where or []
    return dg.AssetCheckResult(
        check_name=CHECK_OPT_OUTS_QUARANTINED,
        passed=count == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if count == 0 else (
            f"{count} opt-out event{'s' if count != 1 else ''} quarantined: "
            f"{'these customers stay' if count != 1 else 'this customer stays'} contactable until delivered again, "
            f"corrected ({', '.join(where)}{' …' if count > len(where) else ''}; raw.quarantine says why)"),
        metadata={"opt_outs_quarantined": count, "examples": list(where)},
    )


def _file_table(report: SourceIngestReport) -> str:
    lines = ["| file | status | read | loaded | quarantined | error |", "|---|---|---:|---:|---:|---|"]
    for f in report.files[:200]:
        # a landing file's name is the uploader's: `|`, a newline or `[text](url)` in it broke the table or made a link
        lines.append(f"| {markdown_cell(f.path)} | {f.status} | {f.rows_read} | {f.rows_loaded} | {f.rows_quarantined} "
                     f"| {markdown_cell(f.error)} |")
    if len(report.files) > 200:
        lines.append(f"| … {len(report.files) - 200} more | | | | | |")
    return "\n".join(lines)


def _range_metadata(report: SourceIngestReport, dates) -> dict:
    """For a run over several batch dates: which, and each date's new files and rows (the other figures are totals)."""
    first, last = dates
    by_date: dict[str, dict[str, int]] = {}
    for f in report.files:
        date = f.batch_date.isoformat() if f.batch_date else "none"
        entry = by_date.setdefault(date, {"new_files": 0, "rows_read": 0, "rows_loaded": 0, "rows_quarantined": 0})
        entry["new_files"] += 1
        entry["rows_read"] += f.rows_read
        entry["rows_loaded"] += f.rows_loaded
        entry["rows_quarantined"] += f.rows_quarantined
    days = (last - first).days + 1
    return {
        "batch_dates": f"{first.isoformat()}…{last.isoformat()} ({days} batch dates): the other figures are this "
                       "run's totals over all of them",
        "by_batch_date": dg.MetadataValue.json(dict(sorted(by_date.items()))),
    }


def _files_warning(check_name: str, report: SourceIngestReport, notes: list[str], lead: str, more: str,
                   listed_as: str, listed: list[str] | None = None) -> dg.AssetCheckResult:
    """A WARN check over this run's new files: passes without `notes`; otherwise "<lead>: <first note>" and how
    many more there are, and where (`more`); the first 20 of `listed` (default: the notes) as metadata `listed_as`."""
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=not notes,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"{lead}: {notes[0]}" + (f" (and {len(notes) - 1} more: {more})" if len(notes) > 1 else ""))
        if notes else None,
        metadata={"files_checked": len(report.files), listed_as: (notes if listed is None else listed)[:20]},
    )


def files_readable_check(report: SourceIngestReport) -> dg.AssetCheckResult:
    """WARN when a new file of this run was rejected whole."""
    rejected = report.rejected
    n = len(rejected)
    return _files_warning(CHECK_FILES_READABLE, report, [f.error for f in rejected],
                          f"{n} file{'s' if n != 1 else ''} rejected, nothing of {'them' if n != 1 else 'it'} loaded",
                          "see raw.ingestion_ledger", "files_rejected", [f"{f.path}: {f.error}" for f in rejected])


def columns_check(report: SourceIngestReport) -> dg.AssetCheckResult:
    """WARN when a loaded file looks like it renamed a contract column (FileResult.columns_note)."""
    noted = [f.columns_note for f in report.files if f.columns_note]
    n = len(noted)
    return _files_warning(CHECK_COLUMNS, report, noted,
                          f"{n} file{'s' if n != 1 else ''} loaded with columns unlike the contract's (a renamed "
                          "column, an amount as a 32-bit float)", "see this check's metadata", "files_noted")


def _worst_files(report: SourceIngestReport, shown: int = 3) -> str:
    """The files with the most quarantined rows of this run, most first, as "<path> <rows>"."""
    worst = sorted((f for f in report.files if f.rows_quarantined), key=lambda f: (-f.rows_quarantined, f.path))
    return ", ".join(f"{shown_path(f.path)} {f.rows_quarantined:,}" for f in worst[:shown]) + (" …" if len(worst) > shown else "")


def _percent(share: float, limit: float) -> str:
    """`share` as a percentage with two decimals, or with as many more as tell it from `limit` (5,001 rows of
    100,000 are 5.001%: "5.00%, above the 5.00% limit" read as a contradiction)."""
    for digits in range(2, 10):
        text = f"{share:.{digits}%}"
        if share == limit or text != f"{limit:.{digits}%}":
            break
    return text


def quarantine_share_check(report: SourceIngestReport, max_share: float) -> dg.AssetCheckResult:
    """Above max_quarantine_share: the run's blocking check fails (exports wait). At or below: it warns. The
    share is of the run's new content: rows re-sent unchanged from earlier files are left out of both counts
    (SourceIngestReport.rows_resent; docs/DECISIONS.md, "Re-sent rows")."""
    share = report.quarantined_share or 0.0
    judged, quarantined = report.rows_judged, report.rows_judged_quarantined
    metadata = {
        "rows_read": report.rows_read,
        "rows_quarantined": report.rows_quarantined,
        "rows_resent": report.rows_resent,
        "rows_resent_quarantined": report.rows_resent_quarantined,
        "quarantined_share": float(share),
        "max_quarantine_share": max_share,
        "quarantined_by_rule": dict(sorted(report.quarantine_by_rule.items())),
    }
    # the rules, most broken first: a blocked run names them as a warning does (a delivery whose channel drifted
    # to a value the contract does not know said only "100.00% ... above the limit")
    by_rule = ", ".join(f"{rule} {n:,}" for rule, n in sorted(report.quarantine_by_rule.items(), key=lambda kv: (-kv[1], kv[0])) if n)
    resent = ""
    if report.rows_resent:
        resent = (f" ({report.rows_resent:,} row{'s' if report.rows_resent != 1 else ''} re-sent unchanged from earlier "
                  f"files left out, {report.rows_resent_quarantined:,} of them quarantined again)")
    counted = f"{quarantined:,} of this run's {judged:,} new rows ({_percent(share, max_share)}) were quarantined{resent}"
    if share > max_share:
        return dg.AssetCheckResult(
            check_name=CHECK_QUARANTINE_SHARE,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=metadata,
            description=(f"{counted}, above the {max_share:.2%} limit; by rule: {by_rule}; in {_worst_files(report)}: "
                         "exports and syncs wait, and the next run exports without these rows; to count them, deliver "
                         "them corrected before it, under a new name (`privdom quarantine --csv` writes them out), or "
                         "pause the schedule"),
        )
    if quarantined == 0:  # none, or only rows quarantined before, sent again unchanged
        description = None if report.rows_quarantined == 0 else (
            f"no new row quarantined: the {report.rows_quarantined:,} quarantined were re-sent unchanged from "
            "earlier files, and judged there (`privdom quarantine` lists them once)")
        return dg.AssetCheckResult(check_name=CHECK_QUARANTINE_SHARE, passed=True,
                                   severity=dg.AssetCheckSeverity.WARN, metadata=metadata, description=description)
    return dg.AssetCheckResult(
        check_name=CHECK_QUARANTINE_SHARE,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=(f"{counted}, within the {max_share:.2%} limit; by rule: {by_rule}; in {_worst_files(report)} "
                     "(`privdom quarantine` lists them)"),
    )


def _settled_before(context: dg.AssetExecutionContext) -> int | None:
    """The landing sensor's cutoff for this run, if it started it (landing.SETTLED_BEFORE_TAG)."""
    value = context.run.tags.get(SETTLED_BEFORE_TAG)
    return int(value) if value and value.isdigit() else None


def _build_ingest_asset(source: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["raw", source])

    @dg.asset(
        key=key,
        group_name="raw",
        kinds={"duckdb", "python"},
        pool=WAREHOUSE_POOL,
        partitions_def=BATCH_DATE_PARTITIONS,
        backfill_policy=dg.BackfillPolicy.single_run(),
        description=(
            f"{CONTRACTS[source].description} Loaded from landing/{source}/ by content hash; rows that break "
            "the contract go to raw.quarantine, every file is listed in raw.ingestion_ledger. Partitioned by "
            "batch date (Asia/Shanghai): a partitioned run loads the new files of its dates, an unpartitioned "
            "run every new file."
        ),
        check_specs=[
            dg.AssetCheckSpec(CHECK_ROWS_RECONCILE, asset=key, description="For every file: rows read = rows loaded + rows quarantined."),
            dg.AssetCheckSpec(CHECK_QUARANTINE_SHARE, asset=key, description="Share of this run's new rows quarantined, against max_quarantine_share (ERROR above it, WARN at or below)."),
            dg.AssetCheckSpec(CHECK_CONTRACT, asset=key, description="Great Expectations suite of the raw data contract on this run's new rows as delivered; failures by rule must equal quarantine counts by rule."),
            dg.AssetCheckSpec(CHECK_FILES_READABLE, asset=key, description="Every new landing file of this run could be read as a whole (WARN otherwise: a rejected file loads nothing and affects nothing else; raw.ingestion_ledger says why, and a corrected file under a new name loads)."),
            dg.AssetCheckSpec(CHECK_COLUMNS, asset=key, description="No new file of this run lacks an optional contract column beside an unknown column with a like name, nor delivers an amount as a 32-bit float (WARN otherwise: a renamed column, e.g. discount for discount_amount, loads its default for every row; a float32 amount with cents is quarantined; correct the file and deliver it under a new name)."),
        ] + ([dg.AssetCheckSpec(CHECK_OPT_OUTS_QUARANTINED, asset=key, description="No opt-out event of this run was quarantined (WARN otherwise: its customer stays contactable until the row is delivered again, corrected).")]
             if source == "channel_events" else []),
    )
    def _ingest(context: dg.AssetExecutionContext, privdom: PrivdomResource):
        settings = privdom.settings()
        dates = batch_date_range(context)
        # The contract suite runs on the judged rows while they load in a worker thread (report.validation), on
        # a DuckDB of its own: the two share the memory limit, three quarters for the warehouse, one for GX (1M
        # customers: the ingest process stays near 1.3 GiB, GX's queries are scans and aggregates).
        load_limit = share_of_memory_limit(settings.duckdb_memory_limit, 0.75)
        gx_limit = share_of_memory_limit(settings.duckdb_memory_limit, 0.25)
        with privdom.writer(context), privdom.connect(memory_limit=load_limit) as con:
            report = ingest_source(con, source, settings, load_id=context.run_id, batch_dates=dates,
                                   validate=lambda frame: gx_worker.validate(source, frame, memory_limit=gx_limit),
                                   modified_before_ns=_settled_before(context))
            with con.cursor() as cur:
                rows_in_table = cur.execute(f"select count(*) from raw.{source}").fetchone()[0]
                opt_outs = opt_outs_quarantined_check(cur, context.run_id) if source == "channel_events" else None
        if report.rows_rehashed:
            context.log.info("raw rows' _row_hash computed again (the warehouse was hashed by an older scheme or "
                             "DuckDB version): " + ", ".join(f"{k} {n:,}" for k, n in report.rows_rehashed.items()))
        for f in report.files:
            if f.status == "rejected":
                context.log.error(f"rejected {shown_path(f.path)}: {f.error}")  # a newline in a name forged a log line
        if report.files_waiting:
            context.log.info(f"{len(report.files_waiting)} landing file(s) modified after the sensor saw them settled "
                             f"wait for a later run (they may still be being copied in): {', '.join(map(shown_path, report.files_waiting[:5]))}")
        passed_over = report.unlisted
        if passed_over:  # a link to a folder, a folder without permission, a pipe: in no ledger row
            context.log.warning(f"{len(passed_over)} entr{'y' if len(passed_over) == 1 else 'ies'} under landing/{source}/ "
                                f"not read (not regular files that can be read): {', '.join(passed_over[:5])}"
                                f"{' …' if len(passed_over) > 5 else ''}")
        astray = [p for p in stray_files(settings.landing_dir) if p.split("/")[0].strip().lower() == source]
        if astray:  # landing/Orders/...: meant for this source, never read
            context.log.warning(f"{len(astray)} landing file(s) in a folder that is not landing/{source}/ are not read: "
                                f"{', '.join(astray[:5])}{' …' if len(astray) > 5 else ''}")
        if dates is None:
            # An unpartitioned run records the batch dates it loaded as materialized partitions.
            # Grouped once: a scan of every file per partition cost dates x files (3 years of hourly files, 26k
            # a source: 11.7 s a source).
            by_date: dict[str, list] = {}
            for f in report.files:
                if f.status == "loaded" and f.batch_date:
                    by_date.setdefault(f.batch_date.isoformat(), []).append(f)
            for partition in partition_keys_of(fs[0].batch_date for fs in by_date.values()):
                files = by_date[partition]
                context.log_event(
                    dg.AssetMaterialization(
                        asset_key=key,
                        partition=partition,
                        metadata={"new_files": len(files), "rows_loaded": sum(f.rows_loaded for f in files)},
                    )
                )
        metadata = {
            "dagster/row_count": rows_in_table,
            "new_files": len(report.files),
            "rows_read": report.rows_read,
            "rows_loaded": report.rows_loaded,
            "rows_quarantined": report.rows_quarantined,
            "files_rejected": sum(1 for f in report.files if f.status == "rejected"),
            "files": dg.MetadataValue.md(_file_table(report)) if report.files else "no new files",
        }
        if dates is not None and dates[0] != dates[1]:
            # Dagster gives every partition of a range run (a backfill, the sensor's run) this one result: say that
            # the figures are the run's, and what each batch date brought
            metadata.update(_range_metadata(report, dates))
        yield dg.MaterializeResult(metadata=metadata)
        mismatched = [f.path for f in report.files if f.rows_read != f.rows_loaded + f.rows_quarantined]
        yield dg.AssetCheckResult(
            check_name=CHECK_ROWS_RECONCILE,
            passed=not mismatched,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"files_checked": len(report.files), "files_not_reconciling": mismatched[:20]},
        )
        yield quarantine_share_check(report, settings.max_quarantine_share)
        if opt_outs is not None:
            yield opt_outs
        yield files_readable_check(report)
        yield columns_check(report)

        try:
            validation = report.validation.result()
        finally:  # the parts' temporary directory
            if hasattr(report.frame, "close"):
                report.frame.close()
        agrees = validation.unexpected_by_rule == report.quarantine_by_rule
        metadata = validation.to_metadata()
        metadata["agrees_with_quarantine"] = agrees
        if not agrees:
            description = "Great Expectations and the quarantine disagree on rows per rule"
        elif not validation.success:
            # a row may break several rules: the rule breaks are not the rows quarantined
            description = (f"{len(metadata['failed_expectations'])} of {metadata['expectations']} expectations unmet: "
                           f"{metadata['unexpected_rows']:,} rule break{'s' if metadata['unexpected_rows'] != 1 else ''} "
                           f"in this run's {metadata['evaluated_rows']:,} new rows, as the quarantine counts them "
                           f"({report.rows_quarantined:,} row{'s' if report.rows_quarantined != 1 else ''} quarantined)")
        else:
            description = None
        yield dg.AssetCheckResult(
            check_name=CHECK_CONTRACT,
            passed=validation.success and agrees,
            severity=dg.AssetCheckSeverity.WARN if agrees else dg.AssetCheckSeverity.ERROR,
            metadata=metadata,
            description=description,
        )

    return _ingest


ingest_assets = [_build_ingest_asset(source) for source in SOURCES]
