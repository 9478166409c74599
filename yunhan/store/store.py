"""A revisioned object store: the model in memory, a change log in the database.

* Every resource has kind, id, project, name, spec, status and the revision of its last
  write. Each committed transaction that writes anything moves ONE global revision by one,
  and every object it wrote carries that revision: a multi-object change is one revision.
* Every committed write is also an ordered event (`Event`) in the `events` table. Each
  process keeps the whole model in memory (`Model`), advanced by those events: its own
  writes as they commit, other processes' (replicas on PostgreSQL) after a NOTIFY or a
  poll. Reads (`read()`) are answered from memory at a known revision; they never touch the
  database. Subscribers (the document engine) see every event once, in order.
* `transaction()` is all or nothing: raise inside it and nothing is written, the revision
  does not move. Writers are serialised across processes by the database (`BEGIN
  IMMEDIATE` on SQLite, a row lock on the revision counter on PostgreSQL); before a writer
  reads, the model is caught up to the database under that lock, so a check-then-write
  (name free? address free?) cannot race, on one process or many.
* Group commit: transactions that arrive while another batch commits run one after the
  other against the in-memory model (plus the writes of their batch) and are committed to
  the database together, in one database transaction; each still gets its own revision,
  and each caller returns only once its batch is durable. A failed batch commit fails every
  transaction in it and leaves the model as it was.
* `update` writes nothing when spec and status are unchanged, so idempotent reconcilers do
  not churn revisions.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from yunhan.errors import Conflict, NotFound
from yunhan.store import audit as audit_chain
from yunhan.store import schema as s
from yunhan.store.audit import AuditEntry
from yunhan.store.resource import Event, Op, Resource

T = TypeVar("T")
Channel = Literal["revision", "any"]
DB_NAME = "yunhan.db"
LOG_KEEP = 200_000  # events kept in the database; a replica further behind reloads
PRUNE_EVERY = 1000  # commits of one process between two prunes of the log
NOTIFY_CHANNEL = "yunhan_events"

log = logging.getLogger("yunhan.store")

# Secondary indexes of the model: (kind, field) -> the key an object is filed under. They
# are what makes "instances of subnet S", "instances on host H" and "is this MAC taken"
# cost the size of the answer instead of the size of the region.
IndexFn = Callable[[Resource], str | None]
INDEXES: dict[tuple[str, str], IndexFn] = {
    ("instance", "subnet"): lambda r: r.spec.get("subnet"),
    ("instance", "host"): lambda r: r.status.get("host"),
    ("instance", "mac"): lambda r: r.status.get("mac"),
    ("instance", "zone"): lambda r: r.spec.get("zone"),
    ("instance", "addr"): lambda r: (
        f"{r.spec.get('subnet')}|{r.status['ip']}" if r.status.get("ip") else None
    ),
    # waiting for a host: not placed, and not stopped (a stopped one waits for a start)
    ("instance", "unplaced"): lambda r: (
        None if r.status.get("host") or r.status.get("phase") == "stopped" else "yes"
    ),
    ("subnet", "vpc"): lambda r: r.spec.get("vpc"),
    ("host", "underlay_ip"): lambda r: r.spec.get("underlay_ip"),
    ("host", "zone"): lambda r: r.spec.get("zone"),
    ("vpc", "vni"): lambda r: str(r.status["vni"]) if r.status.get("vni") else None,
    ("subnet", "route_table"): lambda r: r.spec.get("route_table"),
    ("route_table", "vpc"): lambda r: r.spec.get("vpc"),
    ("route", "table"): lambda r: r.spec.get("table"),
    ("route", "target"): lambda r: (r.spec.get("next_hop") or {}).get("id"),
    ("policy_route", "table"): lambda r: r.spec.get("table"),
    ("policy_route", "target"): lambda r: (r.spec.get("next_hop") or {}).get("id"),
    ("natgw", "vpc"): lambda r: r.spec.get("vpc"),
    ("natgw", "host"): lambda r: r.status.get("host"),
    ("hybrid_gw", "vpc"): lambda r: r.spec.get("vpc"),
    ("eip", "instance"): lambda r: r.status.get("instance"),
    ("eip", "natgw"): lambda r: r.status.get("natgw"),
    ("eip", "address"): lambda r: r.status.get("address"),
    ("security_group", "vpc"): lambda r: r.spec.get("vpc"),
    ("network_acl", "vpc"): lambda r: r.spec.get("vpc"),
    ("flow_log", "vpc"): lambda r: r.spec.get("vpc"),
    ("flow_log", "target"): lambda r: r.spec.get("target"),
    ("subnet", "acl"): lambda r: r.spec.get("acl"),
    # VIPs: their address shares the subnet's address space with instances ("addr", the
    # instance index's key form); claims name a VIP by (VPC, address); the leader settles
    # the damped ones.
    ("vip", "addr"): lambda r: f"{r.spec.get('subnet')}|{r.spec.get('ip')}",
    ("vip", "subnet"): lambda r: r.spec.get("subnet"),
    ("vip", "vpc"): lambda r: r.spec.get("vpc"),
    ("vip", "vpc_ip"): lambda r: f"{r.spec.get('vpc')}|{r.spec.get('ip')}",
    ("vip", "damped"): lambda r: "yes" if r.status.get("damped_since") else None,
    # Volumes (docs/volumes.md): placement sums the sizes homed on a host; an instance's
    # delete and migrate look for what is attached to it.
    ("volume", "zone"): lambda r: r.spec.get("zone"),
    ("volume", "home"): lambda r: r.status.get("home"),
    ("volume", "host"): lambda r: r.status.get("host"),
    ("volume", "instance"): lambda r: (r.spec.get("attachment") or {}).get("instance"),
    # Fleet patches whose rollout the leader still drives (controller.rollout).
    ("patch", "active"): lambda r: (
        "yes" if r.status.get("phase") in ("canary", "rolling", "paused", "rolling_back") else None
    ),
    # (table, dst, priority) of a route, (table, priority) of a policy: both unique, so a
    # table of thousands of routes checks a new one in constant time.
    ("route", "slot"): lambda r: (
        f"{r.spec.get('table')}|{r.spec.get('dst')}|{r.spec.get('priority')}"
    ),
    ("policy_route", "slot"): lambda r: f"{r.spec.get('table')}|{r.spec.get('priority')}",
}


def _row_to_resource(row: Any) -> Resource:
    return Resource(
        kind=row.kind,
        id=row.id,
        project=row.project,
        name=row.name,
        spec=json.loads(row.spec),
        status=json.loads(row.status),
        revision=row.revision,
        created_at=row.created_at,
        labels=json.loads(row.labels or "{}"),
    )


def _token_row(t: TokenInfo) -> dict[str, Any]:
    return {
        "hash": t.hash,
        "id": t.id,
        "project": t.project,
        "created_at": t.created_at,
        "kind": t.kind,
        "host": t.host,
        "description": t.description,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
    }


def _dump(d: dict[str, Any]) -> str:
    # Sorted keys: equal content gives equal text, so "unchanged" is a string compare.
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _obj_json(r: Resource) -> str:
    return json.dumps(
        {
            "project": r.project,
            "name": r.name,
            "spec": r.spec,
            "status": r.status,
            "revision": r.revision,
            "created_at": r.created_at,
            "labels": r.labels,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _event_from_row(row: Any) -> Event:
    o = json.loads(row.obj)
    obj = Resource(
        row.kind,
        row.id,
        o["project"],
        o["name"],
        o["spec"],
        o["status"],
        o["revision"],
        o["created_at"],
        o.get("labels") or {},  # events written before v4 carry none
    )
    return Event(int(row.revision), row.kind, row.id, row.op, obj)


IDEMPOTENCY_TTL = 24 * 3600.0  # seconds an Idempotency-Key's answer is kept


@dataclass(frozen=True)
class Answer:
    """The first answer to a POST that carried an Idempotency-Key (kept `IDEMPOTENCY_TTL`).

    Written in the transaction of the write it answers, so that the write and its answer
    are committed together or not at all, on every replica (it is in the database).
    """

    project: str
    key: str
    method: str
    path: str
    body_sha256: str
    status: int
    response: str  # the answer's JSON text
    created_at: float


@dataclass(frozen=True)
class TokenInfo:
    """What the model knows of a token: never the token, only its hash and metadata.

    `kind`: "project" (a tenant's), "host" (one host's agent endpoints only) or "bootstrap"
    (one-time, exchanged by a host's agent for a host token). A token is valid while it is
    neither revoked nor expired; `valid_at` is what authentication asks.
    """

    hash: str
    id: str
    project: str
    created_at: str
    kind: str = "project"
    host: str | None = None
    description: str | None = None
    expires_at: float | None = None
    revoked_at: float | None = None

    def valid_at(self, now: float) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def public(self) -> dict[str, Any]:
        """Its metadata as the API shows it (never the hash)."""
        return {
            "id": self.id,
            "project": self.project,
            "kind": self.kind,
            "host": self.host,
            "description": self.description,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def _token_from_row(row: Any) -> TokenInfo:
    return TokenInfo(
        hash=row.hash,
        id=row.id or f"tok-{row.hash[:8]}",
        project=row.project,
        created_at=row.created_at,
        kind=row.kind or "project",
        host=row.host,
        description=row.description,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


@dataclass(frozen=True)
class Notice:
    """Something a user must know about (docs/credentials.md, events), before dedup: the
    store folds notices of one (project, object, reason) into one row with a count."""

    project: str
    object: str
    reason: str
    message: str
    at: float


NOTICE_KEEP = 3600.0  # seconds a notice is kept after it was last seen


@dataclass(frozen=True)
class Liveness:
    """What an agent last said: persisted in batches, never one write per heartbeat."""

    host: str
    applied_revision: int
    heartbeat_at: float
    error: str | None


class Model:
    """Every resource in memory, at `revision`, with the indexes the API and controller use.

    Mutated only through `apply` and `load`, under the store's model lock.
    """

    def __init__(self) -> None:
        self.revision = 0
        self.objs: dict[str, Resource] = {}
        self.by_kind: dict[str, dict[str, Resource]] = {}
        self.names: dict[tuple[str, str, str], str] = {}
        self.index: dict[tuple[str, str], dict[str, set[str]]] = {k: {} for k in INDEXES}
        self.tokens: dict[str, TokenInfo] = {}  # token hash -> what is known of it

    def load(self, revision: int, objs: Iterable[Resource], tokens: dict[str, TokenInfo]) -> None:
        self.objs, self.by_kind, self.names = {}, {}, {}
        self.index = {k: {} for k in INDEXES}
        for o in objs:
            self._put(o)
        self.revision = revision
        self.tokens = dict(tokens)

    def _file(self, o: Resource, add: bool) -> None:
        for (kind, fld), fn in INDEXES.items():
            if kind != o.kind:
                continue
            key = fn(o)
            if key is None:
                continue
            bucket = self.index[(kind, fld)]
            if add:
                bucket.setdefault(key, set()).add(o.id)
            else:
                ids = bucket.get(key)
                if ids is not None:
                    ids.discard(o.id)
                    if not ids:
                        del bucket[key]

    def _put(self, o: Resource) -> None:
        old = self.objs.get(o.id)
        if old is not None:
            self._drop(old)
        self.objs[o.id] = o
        self.by_kind.setdefault(o.kind, {})[o.id] = o
        self.names[(o.kind, o.project, o.name)] = o.id
        self._file(o, True)

    def _drop(self, o: Resource) -> None:
        self.objs.pop(o.id, None)
        self.by_kind.get(o.kind, {}).pop(o.id, None)
        if self.names.get((o.kind, o.project, o.name)) == o.id:
            del self.names[(o.kind, o.project, o.name)]
        self._file(o, False)

    def apply(self, ev: Event) -> None:
        if ev.op == "delete":
            old = self.objs.get(ev.id)
            if old is not None:
                self._drop(old)
        else:
            self._put(ev.obj)

    # The view that readers use (an _Overlay offers the same) ---------------------------
    def lookup(self, id: str) -> Resource | None:
        return self.objs.get(id)

    def name_id(self, key: tuple[str, str, str]) -> str | None:
        return self.names.get(key)

    def of_kind(self, kind: str) -> Iterable[Resource]:
        return self.by_kind.get(kind, {}).values()

    def filed(self, key: tuple[str, str], value: str) -> Collection[str]:
        return self.index[key].get(value, ())

    def token(self, token_hash: str) -> TokenInfo | None:
        return self.tokens.get(token_hash)

    def all_tokens(self) -> dict[str, TokenInfo]:
        return self.tokens


class _Overlay:
    """A model seen through uncommitted writes: a batch's, then a transaction's.

    Reads fall through to `base` for what was not written here; writes land here only.
    """

    def __init__(self, base: Model | _Overlay) -> None:
        self.base = base
        self.mine: dict[str, Resource | None] = {}  # id -> written object, None = deleted
        self.mine_names: dict[tuple[str, str, str], str | None] = {}
        self.new_tokens: dict[str, TokenInfo] = {}  # added or revoked here
        self.new_answers: dict[tuple[str, str], Answer] = {}
        # Index changes made here, in order: (index, value) -> [(id, filed or unfiled)].
        # A lookup that no write here touched costs what it costs on the model.
        self.moves: dict[tuple[tuple[str, str], str], list[tuple[str, bool]]] = {}

    @property
    def revision(self) -> int:
        return self.base.revision

    def lookup(self, id: str) -> Resource | None:
        if id in self.mine:
            return self.mine[id]
        return self.base.lookup(id)

    def name_id(self, key: tuple[str, str, str]) -> str | None:
        if key in self.mine_names:
            return self.mine_names[key]
        return self.base.name_id(key)

    def written(self) -> dict[str, Resource | None]:
        out = self.base.written() if isinstance(self.base, _Overlay) else {}
        out.update(self.mine)
        return out

    def root(self) -> Model:
        return self.base.root() if isinstance(self.base, _Overlay) else self.base

    def of_kind(self, kind: str) -> Iterable[Resource]:
        written = self.written()
        out = [o for o in self.root().of_kind(kind) if o.id not in written]
        out.extend(o for o in written.values() if o is not None and o.kind == kind)
        return out

    def chain(self) -> list[_Overlay]:
        """The overlays from the model up to this one (base first)."""
        below = self.base.chain() if isinstance(self.base, _Overlay) else []
        return [*below, self]

    def filed(self, key: tuple[str, str], value: str) -> Collection[str]:
        levels = [ov.moves[(key, value)] for ov in self.chain() if (key, value) in ov.moves]
        ids = self.root().filed(key, value)
        if not levels:
            return ids
        out = set(ids)
        for moves in levels:
            for id, filed in moves:
                if filed:
                    out.add(id)
                else:
                    out.discard(id)
        return out

    def token(self, token_hash: str) -> TokenInfo | None:
        if token_hash in self.new_tokens:
            return self.new_tokens[token_hash]
        return self.base.token(token_hash)

    def all_tokens(self) -> dict[str, TokenInfo]:
        return {**self.base.all_tokens(), **self.new_tokens}

    def write(self, o: Resource | None, id: str, old: Resource | None) -> None:
        if old is not None:
            self.mine_names[(old.kind, old.project, old.name)] = None
            self._move(old, False)
        self.mine[id] = o
        if o is not None:
            self.mine_names[(o.kind, o.project, o.name)] = o.id
            self._move(o, True)

    def _move(self, o: Resource, filed: bool) -> None:
        for key, fn in INDEXES.items():
            if key[0] == o.kind and (value := fn(o)) is not None:
                self.moves.setdefault((key, value), []).append((o.id, filed))

    def merge_into_base(self) -> None:
        assert isinstance(self.base, _Overlay)
        self.base.mine.update(self.mine)
        self.base.mine_names.update(self.mine_names)
        self.base.new_tokens.update(self.new_tokens)
        self.base.new_answers.update(self.new_answers)
        for k, moves in self.moves.items():
            self.base.moves.setdefault(k, []).extend(moves)


View = Model | _Overlay


class Reader:
    """Read access to one consistent state: the model, plus (in a `Tx`) its own writes."""

    def __init__(self, view: View) -> None:
        self._v = view

    @property
    def revision(self) -> int:
        """The revision this reader sees."""
        return self._v.revision

    def get(self, kind: str, id: str) -> Resource | None:
        o = self._v.lookup(id)
        return o if o is not None and o.kind == kind else None

    def by_name(self, kind: str, project: str, name: str) -> Resource | None:
        id = self._v.name_id((kind, project, name))
        return self._v.lookup(id) if id is not None else None

    def find(self, kind: str, field: str, key: str) -> list[Resource]:
        """Objects of `kind` filed under `key` by the index `field` (see INDEXES)."""
        found = (self._v.lookup(i) for i in self._v.filed((kind, field), key))
        return sorted((o for o in found if o is not None), key=lambda o: (o.name, o.id))

    def count_of(self, kind: str, field: str, key: str) -> int:
        return len(self._v.filed((kind, field), key))

    def list(self, kind: str, project: str | None = None) -> list[Resource]:
        """Resources of `kind` (of one project if given), ordered by name then id."""
        objs = self._v.of_kind(kind)
        if project is not None:
            objs = [o for o in objs if o.project == project]
        return sorted(objs, key=lambda o: (o.name, o.id))

    def token_project(self, token_hash: str) -> str | None:
        """The project of a token known to the store (valid or not: see `token`)."""
        t = self._v.token(token_hash)
        return t.project if t is not None else None

    def token(self, token_hash: str) -> TokenInfo | None:
        """What is known of the token with this hash (revoked and expired ones included)."""
        return self._v.token(token_hash)

    def tokens(
        self, project: str | None = None, *, host: str | None = None
    ) -> builtins.list[TokenInfo]:
        """Tokens' metadata (of one project, or serving one host), oldest first."""
        out = [
            t
            for t in self._v.all_tokens().values()
            if (project is None or t.project == project) and (host is None or t.host == host)
        ]
        return sorted(out, key=lambda t: (t.created_at, t.id))

    def token_by_id(self, token_id: str) -> TokenInfo | None:
        return next((t for t in self._v.all_tokens().values() if t.id == token_id), None)


@dataclass
class _Write:
    """What one transaction wrote, in order (its revision is the batch's to give)."""

    ops: list[tuple[Op, Resource]] = field(default_factory=list)
    tokens: list[TokenInfo] = field(default_factory=list)  # new tokens
    revoked: list[TokenInfo] = field(default_factory=list)  # tokens revoked (as revoked)
    liveness: list[Liveness] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    rows: list[Callable[[Connection], None]] = field(default_factory=list)  # side tables

    @property
    def side(self) -> bool:
        """Bookkeeping that moves no revision (tokens, leases, audit, notices, answers,
        rows of side tables)."""
        return bool(
            self.tokens
            or self.revoked
            or self.liveness
            or self.audit
            or self.notices
            or self.answers
            or self.rows
        )


class Tx(Reader):
    """A write transaction. Objects written in it get revision `self.next_revision`."""

    def __init__(
        self,
        view: _Overlay,
        next_revision: int,
        now: str,
        *,
        stored_answer: Callable[[str, str], Answer | None] = lambda _p, _k: None,
    ) -> None:
        self._ov = _Overlay(view)
        super().__init__(self._ov)
        self.next_revision = next_revision
        self._now = now
        self._stored_answer = stored_answer
        self._w = _Write()

    @property
    def revision(self) -> int:
        """The revision committed (or batched) before this transaction."""
        return self.next_revision - 1

    @property
    def wrote(self) -> bool:
        return bool(self._w.ops)

    def create(
        self,
        kind: str,
        id: str,
        project: str,
        name: str,
        spec: dict[str, Any],
        status: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
    ) -> Resource:
        """Insert a resource; a name taken in the project (per kind) is a Conflict."""
        if self.by_name(kind, project, name) is not None:
            raise Conflict(f"a {kind} named {name!r} already exists", kind=kind, name=name)
        if self._ov.lookup(id) is not None:
            raise Conflict(f"id {id} is already taken", id=id)
        # JSON round trip: the stored object never shares mutable state with the caller.
        res = Resource(
            kind,
            id,
            project,
            name,
            json.loads(_dump(spec)),
            json.loads(_dump(status or {})),
            self.next_revision,
            self._now,
            dict(labels or {}),
        )
        self._ov.write(res, id, None)
        self._w.ops.append(("put", res))
        return res

    def update(
        self,
        res: Resource,
        *,
        spec: dict[str, Any] | None = None,
        status: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
    ) -> Resource:
        """Replace spec, status and/or labels; writes nothing (same revision) when all are
        equal."""
        current = self.get(res.kind, res.id)
        if current is None:
            raise NotFound(f"{res.kind} {res.name} ({res.id}) no longer exists", id=res.id)
        new_spec = current.spec if spec is None else json.loads(_dump(spec))
        new_status = current.status if status is None else json.loads(_dump(status))
        new_labels = current.labels if labels is None else dict(labels)
        if (
            _dump(new_spec) == _dump(current.spec)
            and _dump(new_status) == _dump(current.status)
            and new_labels == current.labels
        ):
            return current
        new = replace(
            current,
            spec=new_spec,
            status=new_status,
            labels=new_labels,
            revision=self.next_revision,
        )
        self._ov.write(new, new.id, current)
        self._w.ops.append(("put", new))
        return new

    def delete(self, res: Resource) -> Resource:
        """Delete `res`; returns it as of the deletion (its revision is the delete's, so a
        client can wait for the delete to converge)."""
        current = self.get(res.kind, res.id)
        if current is None:
            raise NotFound(f"{res.kind} {res.name} ({res.id}) no longer exists", id=res.id)
        gone = replace(current, revision=self.next_revision)
        self._ov.write(None, res.id, current)
        self._w.ops.append(("delete", gone))
        return gone

    def add_token(
        self,
        token_hash: str,
        project: str,
        *,
        kind: str = "project",
        host: str | None = None,
        description: str | None = None,
        expires_at: float | None = None,
    ) -> TokenInfo:
        """Register a token by its hash (the token itself is never given to the store)."""
        if self.token(token_hash) is not None:
            raise Conflict("that token is already registered")
        info = TokenInfo(
            hash=token_hash,
            id=f"tok-{secrets.token_hex(4)}",
            project=project,
            created_at=self._now,
            kind=kind,
            host=host,
            description=description,
            expires_at=expires_at,
        )
        self._ov.new_tokens[token_hash] = info
        self._w.tokens.append(info)
        return info

    def revoke_token(self, info: TokenInfo, at: float) -> TokenInfo:
        """Revoke a token (idempotent: a revoked one keeps its first revocation time)."""
        current = self.token(info.hash)
        if current is None:
            raise NotFound(f"token {info.id} does not exist", id=info.id)
        if current.revoked_at is not None:
            return current
        gone = replace(current, revoked_at=at)
        self._ov.new_tokens[info.hash] = gone
        self._w.revoked.append(gone)
        return gone

    def add_audit(self, entries: Iterable[AuditEntry]) -> None:
        """Append audit records; the store chains them when the batch commits."""
        self._w.audit.extend(entries)

    def add_notices(self, notices: Iterable[Notice]) -> None:
        """Record notices; folded into existing ones of the same (project, object, reason)."""
        self._w.notices.extend(notices)

    def write_rows(self, fn: Callable[[Connection], None]) -> None:
        """Run `fn(conn)` in the database transaction that commits this one: rows of a
        side table (patch files, per-process results: `store.patches`) that must be
        written with this transaction's resources or not at all. They move no revision
        and are not in the change log; `fn` must only write (the model does not see it)."""
        self._w.rows.append(fn)

    def set_liveness(self, lv: Liveness) -> None:
        """Persist what an agent last said (bookkeeping: the revision does not move)."""
        self._w.liveness.append(lv)

    def answer(self, project: str, key: str, now: float) -> Answer | None:
        """The answer kept for `key` of `project` (younger than `IDEMPOTENCY_TTL` at
        `now`), from
        this batch or the database. Asked inside the transaction, which holds the
        database's write lock: two requests with one key cannot both miss it."""
        for ov in reversed(self._ov.chain()):
            if (found := ov.new_answers.get((project, key))) is not None:
                return found
        found = self._stored_answer(project, key)
        if found is None or now - found.created_at > IDEMPOTENCY_TTL:
            return None
        return found

    def remember(self, answer: Answer) -> None:
        """Keep `answer` with this transaction's writes (replacing an expired one)."""
        self._ov.new_answers[(answer.project, answer.key)] = answer
        self._w.answers.append(answer)


@dataclass
class _Batch:
    """Transactions committed together. `view` holds their writes for later members."""

    view: _Overlay
    conn: Connection
    base: int
    writes: list[tuple[int, _Write]] = field(default_factory=list)
    side: list[_Write] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None

    @property
    def next_revision(self) -> int:
        return self.base + sum(1 for _r, w in self.writes if w.ops) + 1


Subscriber = Callable[[int, list[Event]], None]
Loader = Callable[[int, list[Resource]], None]


class Store:
    """The store. Open with `Store.open(state_dir)` (SQLite) or `Store.connect(url)`;
    thread-safe; close with `close()`."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.5,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.poll_interval = poll_interval
        self.dialect = engine.dialect.name
        self._write_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._mlock = threading.RLock()  # guards the model
        self._cond = threading.Condition()
        self._seq: dict[Channel, int] = {"revision": 0, "any": 0}
        self._async_waiters: dict[Channel, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]]
        self._async_waiters = {"revision": set(), "any": set()}
        self._last_poll = 0.0
        self._interrupted = False
        self._batch: _Batch | None = None
        self._tokens_rev = -1  # the tokens_rev whose tokens the model holds (-1: none read)
        self._subscribers: list[tuple[Subscriber, Loader]] = []
        self._commits = 0
        self.commit_seconds = 0.0  # total time spent committing batches (metrics)
        self.batches = 0
        self.transactions = 0
        self.events_applied = 0
        self.model = Model()
        conn: Connection
        with (
            self.engine.connect().execution_options(yunhan_immediate=True) as conn,
            conn.begin(),
        ):
            if self.dialect == "postgresql":
                # Two replicas starting at once must not both migrate.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(59487)")
            s.migrate(conn)
        self._reload()

    @classmethod
    def open(cls, state_dir: Path, **kw: Any) -> Store:
        """Open (creating and migrating if needed) state_dir/yunhan.db in WAL mode."""
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls.connect(f"sqlite:///{state_dir / DB_NAME}", **kw)

    @classmethod
    def connect(cls, url: str, **kw: Any) -> Store:
        """Open the store at an SQLAlchemy URL: sqlite:///… or postgresql+psycopg://…"""
        if url.startswith("sqlite"):
            engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
                pool_size=4,
                max_overflow=8,
            )

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
                # Take transaction control from the sqlite3 module so that BEGIN is ours.
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a power cut may lose the last commits, never consistency;
                # agents re-report, and reconcilers re-derive the rest.
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                # IMMEDIATE takes the write lock up front: read-check-write cannot
                # interleave with another process's writer. Readers begin DEFERRED.
                immediate = conn.get_execution_options().get("yunhan_immediate", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        else:
            engine = create_engine(url, pool_size=4, max_overflow=8, pool_pre_ping=True)
        return cls(engine, **kw)

    def close(self) -> None:
        self.engine.dispose()

    def subscribe(self, fn: Subscriber, *, load: Loader) -> None:
        """Call `load(revision, every object)` now (and whenever the model is reloaded),
        then `fn(revision, events)` for every later committed write, in order, exactly once
        each (under the model lock: keep it quick, and never call the store from it)."""
        with self._mlock:
            load(self.model.revision, list(self.model.objs.values()))
            self._subscribers.append((fn, load))

    def _now_iso(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- loading and following the log -------------------------------------------------

    def _reload(self) -> None:
        """Load the whole model from the `resources` table (at start, or when the log
        window has moved past us)."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Writers hold this row FOR UPDATE: sharing it pins one consistent state.
                rev = int(
                    conn.exec_driver_sql(
                        "SELECT value FROM meta WHERE key = 'revision' FOR SHARE"
                    ).scalar_one()
                )
            else:
                rev = self._meta(conn, "revision")
            objs = [_row_to_resource(r) for r in conn.execute(select(s.resources))]
            tokens_rev = self._meta(conn, "tokens_rev")
            tokens = {r.hash: _token_from_row(r) for r in conn.execute(select(s.tokens))}
        with self._mlock:
            self.model.load(rev, objs, tokens)
            self._tokens_rev = tokens_rev
            for _fn, load in self._subscribers:
                log.warning("model reloaded at revision %d: subscribers rebuild", rev)
                load(rev, objs)

    @staticmethod
    def _meta(conn: Connection, key: str) -> int:
        return int(conn.execute(select(s.meta.c.value).where(s.meta.c.key == key)).scalar_one())

    def _advance(self, events: list[Event]) -> None:
        """Apply committed events (in revision order) to the model and the subscribers;
        events at or below the model's revision were applied already and are skipped."""
        if not events:
            return
        with self._mlock:
            by_rev: dict[int, list[Event]] = {}
            for ev in events:
                if ev.revision > self.model.revision:
                    by_rev.setdefault(ev.revision, []).append(ev)
            for rev in sorted(by_rev):
                evs = by_rev[rev]
                for ev in evs:
                    self.model.apply(ev)
                self.model.revision = rev
                self.events_applied += len(evs)
                for fn, _load in self._subscribers:
                    fn(rev, evs)
        self._notify(wrote=True)

    def _catch_up(self, conn: Connection) -> None:
        """Bring the model up to the database (inside the caller's transaction)."""
        base = self.model.revision
        rev = self._meta(conn, "revision")
        if rev <= base:
            return
        horizon = self._meta(conn, "log_horizon")
        if base < horizon:
            raise _Behind()
        rows = conn.execute(
            select(s.events)
            .where(s.events.c.revision > base, s.events.c.revision <= rev)
            .order_by(s.events.c.revision, s.events.c.seq)
        )
        events = [_event_from_row(r) for r in rows]
        # Every revision has events. On PostgreSQL each statement reads its own snapshot
        # (READ COMMITTED): a prune committed after the horizon was read may have taken
        # the start of this range, and applying the rest would skip writes for good.
        if not events or events[0].revision != base + 1:
            raise _Behind()
        self._advance(events)
        self._read_tokens(conn)  # not in the log: another process may have added some

    def _read_tokens(self, conn: Connection) -> None:
        # Tokens are not in the log; a counter moved by every token write says whether to
        # read them again (a thousand hosts' tokens, read on every catch-up, were the
        # largest cost of following another replica's writes).
        version = self._meta(conn, "tokens_rev")
        if version == self._tokens_rev:
            return
        tokens = [_token_from_row(r) for r in conn.execute(select(s.tokens))]
        self._tokens_rev = version
        with self._mlock:
            # Merged, not replaced: tokens are never deleted, and this read may predate a
            # token (or a revocation) that a batch of ours committed meanwhile. A revocation
            # is never undone by a stale read.
            for t in tokens:
                known = self.model.tokens.get(t.hash)
                if known is not None and known.revoked_at is not None and t.revoked_at is None:
                    continue
                self.model.tokens[t.hash] = t

    def refresh(self) -> None:
        """Follow writes of other processes now (the poll fallback, or after a NOTIFY)."""
        try:
            with self.engine.connect() as conn:
                self._catch_up(conn)
                # A token added alone (a new token for a project) moves no revision.
                self._read_tokens(conn)
                conn.rollback()
        except _Behind:
            self._reload()
            self._notify(wrote=True)

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Reader]:
        """A consistent read-only view of the model (in memory)."""
        with self._mlock:
            yield Reader(self.model)

    def _open_batch(self) -> _Batch:
        if self._batch is not None:
            return self._batch
        conn = self.engine.connect().execution_options(yunhan_immediate=True)
        try:
            conn.begin()
            if self.dialect == "postgresql":
                conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
            try:
                self._catch_up(conn)
            except _Behind:
                conn.rollback()
                self._reload()
                conn.begin()
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
                self._catch_up(conn)
        except BaseException:
            conn.close()
            raise
        with self._mlock:
            view = _Overlay(self.model)
            self._batch = _Batch(view=view, conn=conn, base=self.model.revision)
        return self._batch

    @contextmanager
    def transaction(self, *, fence: int | None = None) -> Iterator[Tx]:
        """All-or-nothing write. Raising inside rolls back; the revision does not move.

        Returns (leaves the block) once the write is durable; the model already shows it.
        `fence`: the controller's leader epoch; the transaction is refused (`Fenced`) when
        another leader has taken over since (the epoch row stays locked until the commit,
        so a new leader cannot come in between).
        """
        with self._write_lock:
            batch = self._open_batch()
            try:
                if fence is not None:
                    from yunhan.store.leader import fence as check_fence

                    check_fence(batch.conn, fence)
                tx = Tx(
                    batch.view,
                    batch.next_revision,
                    self._now_iso(),
                    stored_answer=lambda p, k: _read_answer(batch.conn, p, k),
                )
                # No model lock around the body: readers (the event loop among them) must not
                # wait for it. The model cannot move under the body: the batch holds the
                # database's write lock and has caught up, so anything `_advance` applies
                # meanwhile is already in it (and skipped).
                yield tx
                w = tx._w
                if w.ops:
                    tx._ov.merge_into_base()
                    batch.writes.append((tx.next_revision, w))
                elif w.side:
                    tx._ov.merge_into_base()
                    batch.side.append(w)
            except BaseException:
                failed = True
                raise
            else:
                failed = False
            finally:
                if failed and batch.writes == [] and batch.side == []:
                    # Nobody else is in this batch: release the database lock now.
                    self._batch = None
                    batch.done = True
                    with suppress(Exception):
                        batch.conn.rollback()
                    batch.conn.close()
        self.transactions += 1
        self._commit(batch)

    def _commit(self, batch: _Batch) -> None:
        """Commit `batch` unless a companion did already (group commit)."""
        with self._commit_lock:
            if not batch.done:
                with self._write_lock:
                    if self._batch is batch:
                        self._batch = None  # sealed: later writers open the next one
                self._flush(batch)
        if batch.error is not None:
            raise batch.error

    def _flush(self, batch: _Batch) -> None:
        t0 = time.monotonic()
        conn = batch.conn
        events: list[Event] = []
        try:
            if not batch.writes and not batch.side:
                conn.rollback()
                return
            rows: list[dict[str, Any]] = []
            final: dict[str, tuple[Op, Resource]] = {}  # the last write of each object
            for rev, w in batch.writes:
                for seq, (op, obj) in enumerate(w.ops):
                    events.append(Event(rev, obj.kind, obj.id, op, obj))
                    rows.append(
                        {
                            "revision": rev,
                            "seq": seq,
                            "kind": obj.kind,
                            "id": obj.id,
                            "op": op,
                            "obj": _obj_json(obj),
                        }
                    )
                    final[obj.id] = (op, obj)
            self._write_rows(conn, final)
            if rows:
                conn.execute(insert(s.events), rows)
                top = batch.writes[-1][0]
                conn.execute(update(s.meta).where(s.meta.c.key == "revision").values(value=top))
                self._commits += 1
                if self._commits % PRUNE_EVERY == 0:
                    self._prune(conn, top)
                    conn.execute(
                        delete(s.idempotency).where(
                            s.idempotency.c.created_at < self.clock() - IDEMPOTENCY_TTL
                        )
                    )
                if self.dialect == "postgresql":
                    conn.exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}, '{top}'")
            leases: dict[str, Liveness] = {}
            audit: list[AuditEntry] = []
            notices: list[Notice] = []
            tokens_moved = False
            for w in [*(w for _r, w in batch.writes), *batch.side]:
                for t in w.tokens:
                    conn.execute(insert(s.tokens).values(**_token_row(t)))
                for t in w.revoked:
                    conn.execute(
                        update(s.tokens)
                        .where(s.tokens.c.hash == t.hash, s.tokens.c.revoked_at.is_(None))
                        .values(revoked_at=t.revoked_at)
                    )
                tokens_moved = tokens_moved or bool(w.tokens or w.revoked)
                leases.update((lv.host, lv) for lv in w.liveness)
                audit.extend(w.audit)
                notices.extend(w.notices)
                for a in w.answers:
                    _write_answer(conn, a)
                for fn in w.rows:
                    fn(conn)
            if leases:
                self._write_leases(conn, list(leases.values()))
            if audit:
                # Under the database's write lock (this batch holds it): the chain continues
                # from the last record any replica stored, so it stays one chain.
                audit_chain.append(conn, audit)
            if notices:
                self._write_notices(conn, notices)
            if tokens_moved:
                conn.execute(
                    update(s.meta)
                    .where(s.meta.c.key == "tokens_rev")
                    .values(value=s.meta.c.value + 1)
                )
            if tokens_moved and self.dialect == "postgresql" and not rows:
                # Other replicas re-read tokens when they follow the log: a revocation must
                # reach them now, not at their next poll.
                conn.exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}, 'tokens'")
            conn.commit()
        except IntegrityError as exc:
            batch.error = Conflict(f"conflicting write: {exc.orig}")
            with suppress(Exception):
                conn.rollback()
        except BaseException as exc:
            batch.error = exc
            with suppress(Exception):
                conn.rollback()
        finally:
            batch.done = True
            conn.close()
            self.batches += 1
            self.commit_seconds += time.monotonic() - t0
        if batch.error is None:
            with self._mlock:
                for w in [*(w for _r, w in batch.writes), *batch.side]:
                    self.model.tokens.update((t.hash, t) for t in [*w.tokens, *w.revoked])
            self._advance(events)
            if not events and batch.side:
                self._notify(wrote=False)

    def _write_rows(self, conn: Connection, final: dict[str, tuple[Op, Resource]]) -> None:
        """Bring `resources` to the batch's final state: one statement per kind of change.

        Deleted objects go first, so that a name freed and taken again in one batch (a
        delete, then a create of that name) never meets the unique constraint twice.
        """
        gone = [{"id": id} for id, (op, _o) in final.items() if op == "delete"]
        put = [
            {
                "id": o.id,
                "kind": o.kind,
                "project": o.project,
                "name": o.name,
                "spec": _dump(o.spec),
                "status": _dump(o.status),
                "revision": o.revision,
                "created_at": o.created_at,
                "labels": _dump(o.labels),
            }
            for op, o in final.values()
            if op == "put"
        ]
        if gone or put:
            # Objects that change (not created) leave their old row first, for the same
            # reason; then every put is a plain insert.
            ids = [{"id": r["id"]} for r in put] + gone
            conn.execute(delete(s.resources).where(s.resources.c.id == bindparam("gid")),
                         [{"gid": r["id"]} for r in ids])  # fmt: skip
        if put:
            conn.execute(insert(s.resources), put)

    def _write_notices(self, conn: Connection, notices: list[Notice]) -> None:
        # Folded per key first: a flapping host in one batch is one statement, not ten.
        folded: dict[tuple[str, str, str], tuple[Notice, int, float]] = {}
        for n in notices:
            key = (n.project, n.object, n.reason)
            prev = folded.get(key)
            first = prev[2] if prev else n.at
            folded[key] = (n, (prev[1] if prev else 0) + 1, min(first, n.at))
        t = s.notices
        for (project, obj, reason), (n, count, first) in folded.items():
            done = conn.execute(
                update(t)
                .where(t.c.project == project, t.c.object == obj, t.c.reason == reason)
                .values(message=n.message, last_at=n.at, count=t.c.count + count)
            )
            if not done.rowcount:
                conn.execute(
                    insert(t).values(
                        id=f"ev-{secrets.token_hex(4)}",
                        project=project,
                        object=obj,
                        reason=reason,
                        message=n.message,
                        first_at=first,
                        last_at=n.at,
                        count=count,
                    )
                )
        horizon = max(n.at for n in notices) - NOTICE_KEEP
        conn.execute(delete(t).where(t.c.last_at < horizon))

    def notices(
        self, project: str | None = None, obj: str | None = None, *, now: float | None = None
    ) -> list[dict[str, Any]]:
        """Notices kept (of one project, about one object), most recent first. Read from
        the database: notices are not part of the model."""
        t = s.notices
        now = self.clock() if now is None else now
        q = select(t).where(t.c.last_at >= now - NOTICE_KEEP)
        if project is not None:
            q = q.where(t.c.project == project)
        if obj is not None:
            q = q.where(t.c.object == obj)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(t.c.last_at.desc(), t.c.id)).all()
            conn.rollback()
        return [
            {
                "project": r.project,
                "object": r.object,
                "reason": r.reason,
                "message": r.message,
                "first_at": r.first_at,
                "last_at": r.last_at,
                "count": r.count,
            }
            for r in rows
        ]

    def audit_records(
        self, project: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Audit records (of one project, at or after `since`), oldest first."""
        with self.engine.connect() as conn:
            out = audit_chain.read(conn, project=project, since=since, limit=limit)
            conn.rollback()
        return out

    def verify_audit(self) -> audit_chain.Broken | None:
        """The first audit record that breaks the chain (altered, removed, reordered), or
        None when the whole trail holds together."""
        with self.engine.connect() as conn:
            out = audit_chain.verify(conn)
            conn.rollback()
        return out

    @staticmethod
    def _write_leases(conn: Connection, leases: list[Liveness]) -> None:
        # A thousand agents' leases every few seconds: two statements, not two thousand.
        conn.execute(
            delete(s.liveness).where(s.liveness.c.host == bindparam("h")),
            [{"h": lv.host} for lv in leases],
        )
        conn.execute(
            insert(s.liveness),
            [
                {
                    "host": lv.host,
                    "applied_revision": lv.applied_revision,
                    "heartbeat_at": lv.heartbeat_at,
                    "error": lv.error,
                }
                for lv in leases
            ],
        )

    @staticmethod
    def _prune(conn: Connection, top: int) -> None:
        horizon = top - LOG_KEEP
        if horizon <= 0:
            return
        conn.execute(delete(s.events).where(s.events.c.revision <= horizon))
        conn.execute(update(s.meta).where(s.meta.c.key == "log_horizon").values(value=horizon))

    def liveness(self) -> dict[str, Liveness]:
        """The leases persisted last (read from the database: for restarts and tools)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.liveness)).all()
            conn.rollback()
        return {r.host: Liveness(r.host, r.applied_revision, r.heartbeat_at, r.error) for r in rows}

    def revision(self) -> int:
        return self.model.revision  # one attribute read: no lock needed

    # -- watch --------------------------------------------------------------------------
    #
    # Two channels: "revision" wakes on commits that moved the revision; "any" also wakes
    # on bookkeeping (`touch()`, e.g. an agent's acknowledgement). Long polls on documents
    # do not use these: the document engine wakes exactly the hosts a write changed.

    def _notify(self, wrote: bool) -> None:
        channels: tuple[Channel, ...] = ("any", "revision") if wrote else ("any",)
        with self._cond:
            for ch in channels:
                self._seq[ch] += 1
            self._cond.notify_all()
            waiters = [w for ch in channels for w in self._async_waiters[ch]]
        for loop, ev in waiters:
            with suppress(RuntimeError):  # loop closed: its waiter is gone
                loop.call_soon_threadsafe(ev.set)

    def interrupt_waits(self) -> None:
        """End every wait now and from now on (as if timed out): the process is stopping,
        and a long poll must not hold the shutdown for its whole timeout."""
        with self._cond:
            self._interrupted = True
        self._notify(wrote=True)

    def _poll_external(self) -> None:
        """Did another process write? Asked at most once per poll interval, for everyone."""
        now = time.monotonic()
        with self._cond:
            if now - self._last_poll < self.poll_interval:
                return
            self._last_poll = now
        try:
            self.refresh()
        except Exception:
            log.exception("could not follow the change log; retrying")

    def wait_for(
        self, predicate: Callable[[], T | None], timeout: float, on: Channel = "revision"
    ) -> T | None:
        """Block until predicate() returns non-None (returned) or `timeout` s pass (None).

        The predicate runs once at first, then whenever channel `on` signals a change.
        """
        deadline = time.monotonic() + timeout
        seen: int | None = None
        while True:
            with self._cond:
                current = self._seq[on]
            if current != seen:
                seen = current
                result = predicate()
                if result is not None:
                    return result
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._interrupted:
                return None
            with self._cond:
                if self._seq[on] == seen:
                    self._cond.wait(min(remaining, self.poll_interval))
                woken = self._seq[on] != seen
            if not woken:
                self._poll_external()

    async def wait_for_async(
        self, predicate: Callable[[], T | None], timeout: float, on: Channel = "revision"
    ) -> T | None:
        """`wait_for` for coroutines: waits without holding a thread."""
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        key = (loop, ev)
        with self._cond:
            self._async_waiters[on].add(key)
        try:
            deadline = loop.time() + timeout
            seen: int | None = None
            while True:
                with self._cond:
                    current = self._seq[on]
                if current != seen:
                    seen = current
                    ev.clear()
                    result = predicate()
                    if result is not None:
                        return result
                remaining = deadline - loop.time()
                if remaining <= 0 or self._interrupted:
                    return None
                with suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), min(remaining, self.poll_interval))
                if not ev.is_set():
                    await asyncio.to_thread(self._poll_external)
        finally:
            with self._cond:
                self._async_waiters[on].discard(key)

    def wait_revision(self, after: int, timeout: float) -> int | None:
        """Wait until the store revision exceeds `after`; returns it, or None on timeout."""
        return self.wait_for(lambda: r if (r := self.revision()) > after else None, timeout)

    async def wait_revision_async(self, after: int, timeout: float) -> int | None:
        return await self.wait_for_async(
            lambda: r if (r := self.revision()) > after else None, timeout
        )


def _read_answer(conn: Connection, project: str, key: str) -> Answer | None:
    t = s.idempotency
    row = conn.execute(select(t).where(t.c.project == project, t.c.key == key)).first()
    if row is None:
        return None
    return Answer(
        row.project,
        row.key,
        row.method,
        row.path,
        row.body_sha256,
        row.status,
        row.response,
        row.created_at,
    )


def _write_answer(conn: Connection, a: Answer) -> None:
    t = s.idempotency
    # An expired answer of the same key may still be there (pruned lazily): replace it.
    conn.execute(delete(t).where(t.c.project == a.project, t.c.key == a.key))
    conn.execute(
        insert(t).values(
            project=a.project,
            key=a.key,
            method=a.method,
            path=a.path,
            body_sha256=a.body_sha256,
            status=a.status,
            response=a.response,
            created_at=a.created_at,
        )
    )


class _Behind(Exception):
    """The change log no longer holds what this process needs: reload the model."""
