"""The revisioned object store: resources, one global revision, transactions, watch."""

from yunhan.store.resource import Event, Resource
from yunhan.store.store import DB_NAME, AuditEntry, Liveness, Notice, Reader, Store, TokenInfo, Tx

__all__ = [
    "DB_NAME",
    "AuditEntry",
    "Event",
    "Liveness",
    "Notice",
    "Reader",
    "Resource",
    "Store",
    "TokenInfo",
    "Tx",
]
