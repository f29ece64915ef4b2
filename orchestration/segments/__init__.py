"""Segments for retention campaigns (SPEC §5): definitions as data, membership with suppression, file
exports, and syncs to marketing tools. Knows nothing of Dagster; orchestration/defs/segments.py wires it."""

from orchestration.segments.definitions import (
    COLUMNS,
    EXPLAIN_COLUMNS,
    ExportOptions,
    SegmentDefinition,
    SegmentDefinitionError,
    compile_rule,
    export_options,
    load_segment_definitions,
    parse_definitions,
)
from orchestration.segments.destinations import (
    DestinationConfig,
    DestinationConfigError,
    DestinationUnavailable,
    WebhookClient,
    WeComClient,
    client_for,
    parse_destinations,
)
from orchestration.segments.exports import (
    ExportError,
    ExportResult,
    export_freshness,
    export_segment,
    latest_export_id,
    read_manifest,
    summarise_exports,
)
from orchestration.segments.membership import SegmentSummary, build_membership, suppression_violations
from orchestration.segments.sync import SyncReport, ensure_sync_tables, sync_segment

__all__ = [
    "COLUMNS", "EXPLAIN_COLUMNS", "DestinationConfig", "DestinationConfigError", "DestinationUnavailable",
    "ExportError", "ExportOptions", "ExportResult", "SegmentDefinition", "SegmentDefinitionError",
    "SegmentSummary", "SyncReport", "WeComClient", "WebhookClient", "build_membership", "client_for",
    "compile_rule", "ensure_sync_tables", "export_freshness", "export_options", "export_segment",
    "latest_export_id", "load_segment_definitions", "parse_definitions", "parse_destinations", "read_manifest",
    "summarise_exports", "suppression_violations", "sync_segment",
]
