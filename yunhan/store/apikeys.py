"""Project key pairs of the UCloud-compatible Action API (docs/ucloud-api.md).

UCloud signs a request with SHA-1 over its sorted parameters and the private key, so the
server holds each private key (it is shown once, at creation, and never listed). A public
key names its project; a revoked pair is kept (with `revoked_at`) so that its requests are
refused as revoked, not as unknown, and the audit trail can still name it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from yunhan.store import schema as s

MAX_KEYS = 20  # live pairs per project, as UCloud limits API keys per account


@dataclass(frozen=True)
class ApiKey:
    id: str
    public_key: str
    project: str
    private_key: str
    description: str | None
    created_at: float
    revoked_at: float | None

    def view(self) -> dict[str, Any]:
        """What may be shown after creation: everything but the private key."""
        return {
            "id": self.id,
            "public_key": self.public_key,
            "project": self.project,
            "description": self.description,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def _row(r: Any) -> ApiKey:
    return ApiKey(**dict(r._mapping))


class ApiKeys:
    """The api_keys table of one store's database."""

    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock

    def create(self, project: str, description: str | None) -> ApiKey:
        key = ApiKey(
            id=f"key-{secrets.token_hex(4)}",
            # UCloud's public keys are opaque strings; ours say what they are.
            public_key=f"yhpk_{secrets.token_urlsafe(24)}",
            project=project,
            private_key=secrets.token_urlsafe(36),
            description=description,
            created_at=self.clock(),
            revoked_at=None,
        )
        conn: Connection
        with self.engine.connect().execution_options(yunhan_immediate=True) as conn, conn.begin():
            conn.execute(insert(s.api_keys).values(**key.__dict__))
        return key

    def live(self, project: str) -> int:
        return sum(1 for k in self.list(project) if k.revoked_at is None)

    def list(self, project: str | None) -> list[ApiKey]:
        t = s.api_keys
        stmt = select(t).order_by(t.c.created_at, t.c.id)
        if project is not None:
            stmt = stmt.where(t.c.project == project)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            conn.rollback()
        return [_row(r) for r in rows]

    def by_public(self, public_key: str) -> ApiKey | None:
        t = s.api_keys
        with self.engine.connect() as conn:
            r = conn.execute(select(t).where(t.c.public_key == public_key)).first()
            conn.rollback()
        return None if r is None else _row(r)

    def by_id(self, key_id: str) -> ApiKey | None:
        t = s.api_keys
        with self.engine.connect() as conn:
            r = conn.execute(select(t).where(t.c.id == key_id)).first()
            conn.rollback()
        return None if r is None else _row(r)

    def revoke(self, key: ApiKey) -> ApiKey:
        if key.revoked_at is not None:
            return key
        at = self.clock()
        t = s.api_keys
        conn: Connection
        with self.engine.connect().execution_options(yunhan_immediate=True) as conn, conn.begin():
            conn.execute(update(t).where(t.c.id == key.id).values(revoked_at=at))
        return ApiKey(**{**key.__dict__, "revoked_at": at})
