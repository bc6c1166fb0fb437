"""`legion db`: what host.db holds and what retention does (control socket and CLI)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TableStat(BaseModel):
    name: str
    bytes: int  # pages of this table or index
    rows: int | None = None  # tables only


class AuditStat(BaseModel):
    first_seq: int | None  # the oldest record still in host.db
    head_seq: int
    records: int
    oldest_ts: float | None
    bytes: int  # the audit table, its indexes and its checkpoints
    sealed_seq: int  # records up to this one were archived and sealed
    seals: int
    archives: int  # archive files in LEGION_HOME/archive
    archive_bytes: int


class LedgerStat(BaseModel):
    rows: int
    oldest_ts: float | None
    rollup_rows: int
    rollup_days: int
    bytes: int  # the ledger, its indexes and its rollups


class RetentionPlan(BaseModel):
    """What the next retention pass does, as of now."""

    enabled: bool
    audit_archive_through: int | None  # archive and delete records up to this seq
    audit_records: int
    audit_reason: str  # age, size, both, or why nothing is archived
    ledger_rows: int  # ledger rows to roll up
    ledger_days: list[str]  # the UTC days they belong to
    free_pages: int  # pages incremental vacuum gives back


class DbStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    bytes: int  # pages in use times the page size: what host.db holds now
    file_bytes: int  # the file on disk (follows `bytes` at the next WAL checkpoint)
    wal_bytes: int
    page_size: int
    pages: int
    free_pages: int
    auto_vacuum: str
    tables: list[TableStat]
    audit: AuditStat
    ledger: LedgerStat
    plan: RetentionPlan


class PruneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dry_run: bool = False


class ArchivedSegment(BaseModel):
    file: str
    first: int
    last: int
    records: int
    bytes: int
    sha256: str


class PruneResult(BaseModel):
    dry_run: bool
    plan: RetentionPlan
    archived: list[ArchivedSegment] = Field(default_factory=list)
    audit_records_deleted: int = 0
    ledger_rows_rolled_up: int = 0
    pages_vacuumed: int = 0
    bytes_before: int = 0  # host.db's size in pages (DbStats.bytes) before and after
    bytes_after: int = 0
    took_s: float = 0.0
