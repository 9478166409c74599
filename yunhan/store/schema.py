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


MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3]
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
