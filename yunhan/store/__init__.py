"""The revisioned object store: resources, one global revision, transactions, watch."""

from yunhan.store.resource import Event, Resource
from yunhan.store.store import DB_NAME, IDEMPOTENCY_TTL, Answer, Liveness, Reader, Store, Tx

__all__ = [
    "DB_NAME",
    "IDEMPOTENCY_TTL",
    "Answer",
    "Event",
    "Liveness",
    "Reader",
    "Resource",
    "Store",
    "Tx",
]
