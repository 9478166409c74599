"""Tables of the store and the ordered migrations that build them.

The schema is SQLAlchemy Core so that PostgreSQL can follow SQLite (ARCHITECTURE §6).
`MIGRATIONS[i]` takes the database from version i to i+1; `migrate` runs the missing ones
in order inside the caller's transaction (all or none) and records the version reached in
`schema_version`. The tables below are the CURRENT shape, used by queries; a migration step
spells out the shape of its own version (`_v1` has its own table definitions), so that it
still builds that version after the tables have moved on. A step is never edited once
released; a new step is appended.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

# Counters: "revision" (the global store revision), "leader_epoch" (the controller's
# fencing token) and "log_horizon" (the oldest revision the events table still holds).
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

resources = Table(
    "resources",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("project", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("spec", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("labels", Text, nullable=False, server_default="{}"),  # v4: key -> value (JSON)
    UniqueConstraint("kind", "project", "name", name="uq_resources_kind_project_name"),
    Index("ix_resources_kind_project", "kind", "project"),
)

# Only a hash of every token is kept: a leaked database file grants nothing.
tokens = Table(
    "tokens",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("project", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    # v4: what a person (and `token list`) may see of a token, and its lifecycle.
    Column("id", String(32), nullable=True),  # "tok-<8 hex>"; never the token itself
    Column("kind", String(16), nullable=False, server_default="project"),  # project|host|bootstrap
    Column("host", String(64), nullable=True),  # the only host a host/bootstrap token serves
    Column("description", Text, nullable=True),
    Column("expires_at", Float, nullable=True),  # unix time; None: no expiry
    Column("revoked_at", Float, nullable=True),
)

# Answers to POSTs that carried an Idempotency-Key, kept 24 h: a retry with the same key
# and body gets the first answer, with another body a 422 (issue 7).
idempotency = Table(
    "idempotency",
    metadata,
    Column("project", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", Text, nullable=False),
    Column("body_sha256", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("project", "key"),
)

# The audit trail: every accepted write and every refused authorisation, each record
# chained to the previous by hash so that a removed or altered record is detected.
audit = Table(
    "audit",
    metadata,
    Column("seq", BigInteger, primary_key=True),
    Column("at", Float, nullable=False),
    Column("project", String(64), nullable=True),
    Column("token_id", String(32), nullable=True),
    Column("request_id", String(64), nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", Text, nullable=False),
    Column("resource", String(64), nullable=True),
    Column("result", String(32), nullable=False),
    Column("status", Integer, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# What users must know about (a host that stopped heartbeating, an instance that failed,
# an apply error, a scheduling refusal): deduplicated by (project, object, reason), with
# first/last time and a count, kept for a bounded time. Not revisioned, not in the log.
notices = Table(
    "notices",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("project", String(64), nullable=False),
    Column("object", String(64), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("first_at", Float, nullable=False),
    Column("last_at", Float, nullable=False),
    Column("count", Integer, nullable=False),
    UniqueConstraint("project", "object", "reason", name="uq_notices_project_object_reason"),
)

# What agents report every few seconds. Not revisioned: a heartbeat is not a change of the
# model, and bumping the revision on each one would wake every watcher for nothing.
liveness = Table(
    "liveness",
    metadata,
    Column("host", String(64), primary_key=True),
    Column("applied_revision", BigInteger, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("error", Text, nullable=True),
)

# Flow log records (docs/flowlogs.md): what agents ship, enriched with the instance's
# project, VPC and subnet when received. Not revisioned, not in the change log (a batch of
# records every few seconds from every host is not a change of the model, and must wake no
# watcher); pruned by age and by a row cap (store/flows.py). `action` is null for a
# SKIPDATA record (records the agent had to drop; `packets` holds their count).
flow_records = Table(
    "flow_records",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("project", String(64), nullable=False),
    Column("vpc", String(64), nullable=False),
    Column("subnet", String(64), nullable=False),
    Column("instance", String(64), nullable=False),
    Column("interface", String(64), nullable=True),
    Column("host", String(64), nullable=False),
    Column("flow_direction", String(8), nullable=True),
    Column("srcaddr", String(45), nullable=True),
    Column("dstaddr", String(45), nullable=True),
    Column("srcport", Integer, nullable=True),
    Column("dstport", Integer, nullable=True),
    Column("protocol", Integer, nullable=True),
    Column("packets", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float, nullable=False),
    Column("action", String(8), nullable=True),
    Column("log_status", String(8), nullable=False),
    Column("received_at", Float, nullable=False),
    Index("ix_flow_records_vpc_start", "vpc", "start"),
    Index("ix_flow_records_instance_start", "instance", "start"),
    Index("ix_flow_records_project_start", "project", "start"),
    Index("ix_flow_records_received_at", "received_at"),
)  # fmt: skip

# Fleet hot patches (docs/fleetpatch.md): the uploaded .yhp files by content (sha256), served
# to agents, and what agents report of each process a patch touched. Not resources: a
# report moves no revision by its rows (the patch's status carries the counters).
patch_files = Table(
    "patch_files",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

patch_targets = Table(
    "patch_targets",
    metadata,
    Column("patch", String(64), nullable=False),
    Column("host", String(64), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("start", BigInteger, nullable=False),  # the process's start time (clock ticks)
    Column("comm", String(64), nullable=False),
    Column("instance", String(64), nullable=True),
    Column("result", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("at", Float, nullable=False),
    PrimaryKeyConstraint("patch", "host", "pid", "start"),
    Index("ix_patch_targets_patch_at", "patch", "at"),
)

# Functions (issue 11, docs/functions.md): code by sha256, immutable versions, and usage
# metered per minute (upserted by adding; gb_ms is billed_ms x memory_mb).
function_code = Table(
    "function_code",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("content", LargeBinary, nullable=False),  # the source, a tar.gz
    Column("size", BigInteger, nullable=False),
    Column("created", Float, nullable=False),
)

function_versions = Table(
    "function_versions",
    metadata,
    Column("function", String(64), nullable=False),  # the function's id
    Column("version", Integer, nullable=False),
    Column("code_sha256", String(64), nullable=False),
    Column("handler", String(255), nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("timeout_s", Float, nullable=False),
    Column("env", Text, nullable=False),  # JSON: name -> value
    Column("created", Float, nullable=False),
    PrimaryKeyConstraint("function", "version"),
)

# Hybrid traffic counters (issue 16; docs/cutover.md): what moved at one counting point for
# one IDC prefix and direction between two readings, as agents post it. Not resources, like
# flow records: an ingest moves no revision; pruned by age and by a row cap.
traffic_samples = Table(
    "traffic_samples",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("project", String(64), nullable=False),
    Column("vpc", String(64), nullable=False),
    Column("prefix", String(43), nullable=False),
    Column("point", String(16), nullable=False),  # host-sent, host-delivered, replica
    Column("source", String(128), nullable=False),  # host name, or gateway id/replica index
    Column("direction", String(4), nullable=False),  # in (to the prefix), out (from it)
    Column("packets", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Index("ix_traffic_samples_vpc_end", "vpc", "end"),
    Index("ix_traffic_samples_project_end", "project", "end"),
)  # fmt: skip

# Key pairs of the UCloud-compatible Action API (issue 17; docs/ucloud-api.md). The
# private key is kept: UCloud's signature is a SHA-1 over the parameters and the private
# key, so the server must hold it to check one (as UCloud does). Not resources: a key's
# lifecycle is a token's (made, listed, revoked), and the request path reads one row.
api_keys = Table(
    "api_keys",
    metadata,
    Column("public_key", String(64), primary_key=True),
    Column("id", String(32), nullable=False, unique=True),  # "key-<8 hex>"
    Column("project", String(64), nullable=False),
    Column("private_key", String(128), nullable=False),
    Column("description", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Index("ix_api_keys_project", "project"),
)

function_usage = Table(
    "function_usage",
    metadata,
    Column("project", String(64), nullable=False),
    Column("function", String(64), nullable=False),  # the function's id
    Column("function_name", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("minute", BigInteger, nullable=False),  # unix time // 60
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("cold_starts", BigInteger, nullable=False),
    Column("billed_ms", BigInteger, nullable=False),
    Column("gb_ms", BigInteger, nullable=False),  # billed_ms x memory_mb (MB-ms)
    PrimaryKeyConstraint("project", "function", "version", "minute"),
    Index("ix_function_usage_project_minute", "project", "minute"),
    Index("ix_function_usage_minute", "minute"),
)

# The change log (ARCHITECTURE §6): every committed write of a resource, in order. Each
# API process keeps the model in memory and follows this log (after a NOTIFY on PostgreSQL,
# or by polling), so any replica answers from memory at a known revision. `obj` is the
# object as written (for a delete: as it was last). Pruned to a window; a replica that fell
# behind the window reloads `resources` instead.
events = Table(
    "events",
    metadata,
    Column("revision", BigInteger, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("id", String(64), nullable=False),
    Column("op", String(8), nullable=False),
    Column("obj", Text, nullable=False),
    PrimaryKeyConstraint("revision", "seq"),
)


def _v1(conn: Connection) -> None:
    m = MetaData()
    tables = [
        Table("meta", m, Column("key", String(64), primary_key=True),
              Column("value", Integer, nullable=False)),
        Table("resources", m,
              Column("id", String(64), primary_key=True),
              Column("kind", String(32), nullable=False),
              Column("project", String(64), nullable=False),
              Column("name", String(255), nullable=False),
              Column("spec", Text, nullable=False),
              Column("status", Text, nullable=False),
              Column("revision", Integer, nullable=False),
              Column("created_at", String(32), nullable=False),
              UniqueConstraint("kind", "project", "name", name="uq_resources_kind_project_name"),
              Index("ix_resources_kind_project", "kind", "project")),
        Table("tokens", m,
              Column("hash", String(64), primary_key=True),
              Column("project", String(64), nullable=False),
              Column("created_at", String(32), nullable=False)),
        Table("liveness", m,
              Column("host", String(64), primary_key=True),
              Column("applied_revision", Integer, nullable=False),
              Column("heartbeat_at", Float, nullable=False),
              Column("error", Text, nullable=True)),
        Table("doc_history", m,
              Column("host", String(64), nullable=False),
              Column("revision", Integer, nullable=False),
              PrimaryKeyConstraint("host", "revision")),
    ]  # fmt: skip
    for table in tables:
        table.create(conn)
    conn.execute(insert(meta), [{"key": "revision", "value": 0}])
    conn.execute(insert(meta), [{"key": "compiled_revision", "value": 0}])


def _v2(conn: Connection) -> None:
    # v1 controllers compiled and wrote in one transaction: input was revision - 1.
    conn.exec_driver_sql(
        "ALTER TABLE doc_history ADD COLUMN input_revision INTEGER NOT NULL DEFAULT 0"
    )
    conn.exec_driver_sql("UPDATE doc_history SET input_revision = revision - 1")


def _v3(conn: Connection) -> None:
    # Documents are no longer stored: every API process compiles them from the change log.
    m = MetaData()
    Table("events", m,
          Column("revision", BigInteger, nullable=False),
          Column("seq", Integer, nullable=False),
          Column("kind", String(32), nullable=False),
          Column("id", String(64), nullable=False),
          Column("op", String(8), nullable=False),
          Column("obj", Text, nullable=False),
          PrimaryKeyConstraint("revision", "seq")).create(conn)  # fmt: skip
    if conn.dialect.name == "postgresql":
        # Revisions are 64-bit (SQLite's INTEGER already is).
        for table, col in (
            ("meta", "value"),
            ("resources", "revision"),
            ("liveness", "applied_revision"),
        ):
            conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {col} TYPE BIGINT")  # fmt: skip
    conn.exec_driver_sql("DROP TABLE doc_history")
    conn.exec_driver_sql("DELETE FROM resources WHERE kind = 'hostdesired'")
    conn.execute(delete(meta).where(meta.c.key == "compiled_revision"))
    # Fencing for the controller (store/leader.py): bumped by every new leader.
    conn.execute(insert(meta), [{"key": "leader_epoch", "value": 0}])
    # Events older than this are pruned: a reader behind it reloads `resources`.
    conn.execute(insert(meta), [{"key": "log_horizon", "value": 0}])


def _v4(conn: Connection) -> None:
    # Labels on every resource; token metadata and lifecycle; idempotency keys; the audit
    # trail; user-facing notices (issue 7).
    conn.exec_driver_sql("ALTER TABLE resources ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'")
    for col, ddl in (
        ("id", "VARCHAR(32)"),
        ("kind", "VARCHAR(16) NOT NULL DEFAULT 'project'"),
        ("host", "VARCHAR(64)"),
        ("description", "TEXT"),
        ("expires_at", "FLOAT"),
        ("revoked_at", "FLOAT"),
    ):
        conn.exec_driver_sql(f"ALTER TABLE tokens ADD COLUMN {col} {ddl}")
    # Tokens made before v4 get an id from their hash (which stays secret: 8 of 64 digits).
    conn.exec_driver_sql("UPDATE tokens SET id = 'tok-' || substr(hash, 1, 8) WHERE id IS NULL")
    m = MetaData()
    Table("idempotency", m,
          Column("project", String(64), nullable=False),
          Column("key", String(255), nullable=False),
          Column("method", String(8), nullable=False),
          Column("path", Text, nullable=False),
          Column("body_sha256", String(64), nullable=False),
          Column("status", Integer, nullable=False),
          Column("response", Text, nullable=False),
          Column("created_at", Float, nullable=False),
          PrimaryKeyConstraint("project", "key")).create(conn)  # fmt: skip
    Table("audit", m,
          Column("seq", BigInteger, primary_key=True),
          Column("at", Float, nullable=False),
          Column("project", String(64), nullable=True),
          Column("token_id", String(32), nullable=True),
          Column("request_id", String(64), nullable=False),
          Column("method", String(8), nullable=False),
          Column("path", Text, nullable=False),
          Column("resource", String(64), nullable=True),
          Column("result", String(32), nullable=False),
          Column("status", Integer, nullable=False),
          Column("prev_hash", String(64), nullable=False),
          Column("hash", String(64), nullable=False)).create(conn)  # fmt: skip
    Table("notices", m,
          Column("id", String(32), primary_key=True),
          Column("project", String(64), nullable=False),
          Column("object", String(64), nullable=False),
          Column("reason", String(64), nullable=False),
          Column("message", Text, nullable=False),
          Column("first_at", Float, nullable=False),
          Column("last_at", Float, nullable=False),
          Column("count", Integer, nullable=False),
          UniqueConstraint("project", "object", "reason",
                           name="uq_notices_project_object_reason")).create(conn)  # fmt: skip


def _v5(conn: Connection) -> None:
    # Moved by every token write: replicas re-read tokens only when it moved.
    conn.execute(insert(meta), [{"key": "tokens_rev", "value": 0}])


def _v6(conn: Connection) -> None:
    # Flow log records (issue 10): their own table, outside the model and the change log.
    m = MetaData()
    Table("flow_records", m,
          Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                 autoincrement=True),
          Column("project", String(64), nullable=False),
          Column("vpc", String(64), nullable=False),
          Column("subnet", String(64), nullable=False),
          Column("instance", String(64), nullable=False),
          Column("interface", String(64), nullable=True),
          Column("host", String(64), nullable=False),
          Column("flow_direction", String(8), nullable=True),
          Column("srcaddr", String(45), nullable=True),
          Column("dstaddr", String(45), nullable=True),
          Column("srcport", Integer, nullable=True),
          Column("dstport", Integer, nullable=True),
          Column("protocol", Integer, nullable=True),
          Column("packets", BigInteger, nullable=False),
          Column("bytes", BigInteger, nullable=False),
          Column("start", Float, nullable=False),
          Column("end", Float, nullable=False),
          Column("action", String(8), nullable=True),
          Column("log_status", String(8), nullable=False),
          Column("received_at", Float, nullable=False),
          Index("ix_flow_records_vpc_start", "vpc", "start"),
          Index("ix_flow_records_instance_start", "instance", "start"),
          Index("ix_flow_records_project_start", "project", "start"),
          Index("ix_flow_records_received_at", "received_at")).create(conn)  # fmt: skip


def _v7(conn: Connection) -> None:
    # Fleet hot patching (issue 13): patch files by digest, per-process results.
    m = MetaData()
    Table("patch_files", m,
          Column("digest", String(64), primary_key=True),
          Column("size", BigInteger, nullable=False),
          Column("content", LargeBinary, nullable=False),
          Column("created_at", Float, nullable=False)).create(conn)  # fmt: skip
    Table("patch_targets", m,
          Column("patch", String(64), nullable=False),
          Column("host", String(64), nullable=False),
          Column("pid", Integer, nullable=False),
          Column("start", BigInteger, nullable=False),
          Column("comm", String(64), nullable=False),
          Column("instance", String(64), nullable=True),
          Column("result", String(16), nullable=False),
          Column("reason", Text, nullable=True),
          Column("at", Float, nullable=False),
          PrimaryKeyConstraint("patch", "host", "pid", "start"),
          Index("ix_patch_targets_patch_at", "patch", "at")).create(conn)  # fmt: skip


def _v8(conn: Connection) -> None:
    # Functions (issue 11, slice 2): code by sha256, versions, usage per minute.
    m = MetaData()
    Table("function_code", m,
          Column("sha256", String(64), primary_key=True),
          Column("content", LargeBinary, nullable=False),
          Column("size", BigInteger, nullable=False),
          Column("created", Float, nullable=False)).create(conn)  # fmt: skip
    Table("function_versions", m,
          Column("function", String(64), nullable=False),
          Column("version", Integer, nullable=False),
          Column("code_sha256", String(64), nullable=False),
          Column("handler", String(255), nullable=False),
          Column("memory_mb", Integer, nullable=False),
          Column("timeout_s", Float, nullable=False),
          Column("env", Text, nullable=False),
          Column("created", Float, nullable=False),
          PrimaryKeyConstraint("function", "version")).create(conn)  # fmt: skip
    Table("function_usage", m,
          Column("project", String(64), nullable=False),
          Column("function", String(64), nullable=False),
          Column("function_name", String(255), nullable=False),
          Column("version", Integer, nullable=False),
          Column("minute", BigInteger, nullable=False),
          Column("requests", BigInteger, nullable=False),
          Column("errors", BigInteger, nullable=False),
          Column("cold_starts", BigInteger, nullable=False),
          Column("billed_ms", BigInteger, nullable=False),
          Column("gb_ms", BigInteger, nullable=False),
          PrimaryKeyConstraint("project", "function", "version", "minute"),
          Index("ix_function_usage_project_minute", "project", "minute"),
          Index("ix_function_usage_minute", "minute")).create(conn)  # fmt: skip


def _v9(conn: Connection) -> None:
    # Hybrid traffic statistics (issue 16): counter deltas per prefix, point and direction.
    m = MetaData()
    Table("traffic_samples", m,
          Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                 autoincrement=True),
          Column("project", String(64), nullable=False),
          Column("vpc", String(64), nullable=False),
          Column("prefix", String(43), nullable=False),
          Column("point", String(16), nullable=False),
          Column("source", String(128), nullable=False),
          Column("direction", String(4), nullable=False),
          Column("packets", BigInteger, nullable=False),
          Column("bytes", BigInteger, nullable=False),
          Column("start", Float, nullable=False),
          Column("end", Float, nullable=False),
          Column("received_at", Float, nullable=False),
          Index("ix_traffic_samples_vpc_end", "vpc", "end"),
          Index("ix_traffic_samples_project_end", "project", "end")).create(conn)  # fmt: skip


def _v10(conn: Connection) -> None:
    # The UCloud-compatible Action API (issue 17): project key pairs.
    m = MetaData()
    Table("api_keys", m,
          Column("public_key", String(64), primary_key=True),
          Column("id", String(32), nullable=False, unique=True),
          Column("project", String(64), nullable=False),
          Column("private_key", String(128), nullable=False),
          Column("description", Text, nullable=True),
          Column("created_at", Float, nullable=False),
          Column("revoked_at", Float, nullable=True),
          Index("ix_api_keys_project", "project")).create(conn)  # fmt: skip


MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10]
LATEST = len(MIGRATIONS)
# PostgreSQL advisory lock keys are one 64-bit space per database: ours are "YH" + a tag.
MIGRATE_LOCK_KEY = 0x5948_0000_0000_0001


def current_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, "schema_version"):
        return 0
    return int(conn.execute(select(schema_version.c.version)).scalar_one_or_none() or 0)


def migrate(conn: Connection, target: int = LATEST) -> int:
    """Bring the schema to `target` (within the caller's transaction); returns the version.

    On PostgreSQL, replicas starting at once take turns (a transaction-level advisory lock):
    otherwise two could both see no schema_version table and both try to create it.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(MIGRATE_LOCK_KEY)))
    if not conn.dialect.has_table(conn, "schema_version"):
        schema_version.create(conn)
        conn.execute(insert(schema_version).values(version=0))
    version = current_version(conn)
    if version > LATEST:
        raise RuntimeError(
            f"database schema version {version} is newer than this Yunhan ({LATEST}); upgrade"
        )
    while version < target:
        MIGRATIONS[version](conn)
        version += 1
        conn.execute(update(schema_version).values(version=version))
    return version
