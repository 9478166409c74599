"""The audit trail's hash chain: how records are chained, stored, read and verified.

Each record carries `prev_hash`, the hash of the record before it, and `hash`, the sha256
of its own canonical JSON (sorted keys, no spaces, every field but `hash`, `prev_hash`
included). Altering a record breaks its own hash; removing or reordering records breaks the
next record's `prev_hash` or the sequence. The first record's `prev_hash` is GENESIS.

`append` runs inside the store's batch commit, under the database's write lock: it reads
the last stored record and continues from it, so records written by several replicas form
one chain. `verify` names the first record that does not hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from yunhan.store import schema as s

GENESIS = "0" * 64
FIELDS = (
    "seq",
    "at",
    "project",
    "token_id",
    "request_id",
    "method",
    "path",
    "resource",
    "result",
    "status",
    "prev_hash",
)


@dataclass(frozen=True)
class AuditEntry:
    """One audit record before the store chains it (its seq and hashes are given at flush,
    under the database's write lock, from the last record stored: `append`)."""

    at: float
    project: str | None
    token_id: str | None
    request_id: str
    method: str
    path: str
    resource: str | None
    result: str
    status: int


def record_hash(record: dict[str, Any]) -> str:
    """sha256 of the record's canonical JSON (every field of FIELDS, prev_hash included)."""
    body = {k: record[k] for k in FIELDS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def chain(entries: Iterable[AuditEntry], last_seq: int, last_hash: str) -> list[dict[str, Any]]:
    """The rows for `entries`, continuing the chain after (last_seq, last_hash). Pure."""
    rows = []
    seq, prev = last_seq, last_hash
    for e in entries:
        seq += 1
        row: dict[str, Any] = {
            "seq": seq,
            "at": float(e.at),
            "project": e.project,
            "token_id": e.token_id,
            "request_id": e.request_id,
            "method": e.method,
            "path": e.path,
            "resource": e.resource,
            "result": e.result,
            "status": int(e.status),
            "prev_hash": prev,
        }
        row["hash"] = prev = record_hash(row)
        rows.append(row)
    return rows


def append(conn: Connection, entries: list[AuditEntry]) -> None:
    """Store `entries` at the end of the chain (the caller holds the write lock)."""
    last = conn.execute(
        select(s.audit.c.seq, s.audit.c.hash).order_by(s.audit.c.seq.desc()).limit(1)
    ).first()
    last_seq, last_hash = (int(last.seq), str(last.hash)) if last else (0, GENESIS)
    conn.execute(insert(s.audit), chain(entries, last_seq, last_hash))


def _row(r: Any) -> dict[str, Any]:
    return {k: getattr(r, k) for k in (*FIELDS, "hash")}


def read(
    conn: Connection, *, project: str | None, since: float | None, limit: int
) -> list[dict[str, Any]]:
    q = select(s.audit)
    if project is not None:
        q = q.where(s.audit.c.project == project)
    if since is not None:
        q = q.where(s.audit.c.at >= since)
    return [_row(r) for r in conn.execute(q.order_by(s.audit.c.seq).limit(limit))]


@dataclass(frozen=True)
class Broken:
    """The first record where the chain does not hold, and why."""

    seq: int
    reason: str


def check(records: Iterable[dict[str, Any]]) -> Broken | None:
    """The first broken record of `records` (in seq order), or None. Pure."""
    prev_seq, prev_hash = 0, GENESIS
    for r in records:
        seq = int(r["seq"])
        if seq != prev_seq + 1:
            return Broken(seq, f"records {prev_seq + 1}..{seq - 1} are missing")
        if r["prev_hash"] != prev_hash:
            return Broken(seq, "its prev_hash is not the hash of the record before it")
        if record_hash(r) != r["hash"]:
            return Broken(seq, "its content does not match its hash (the record was altered)")
        prev_seq, prev_hash = seq, r["hash"]
    return None


def verify(conn: Connection) -> Broken | None:
    rows = conn.execute(select(s.audit).order_by(s.audit.c.seq)).yield_per(1000)
    return check(_row(r) for r in rows)
