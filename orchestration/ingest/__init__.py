"""Ingestion of landing-zone files into schema ``raw`` (SPEC §2)."""

from orchestration.ingest.core import FileResult, SourceIngestReport, ensure_raw_schema, ingest_source

__all__ = ["FileResult", "SourceIngestReport", "ensure_raw_schema", "ingest_source"]
