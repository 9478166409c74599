"""The revisioned object store: resources, one global revision, transactions, watch."""

from yunhan.store.audit import AuditEntry
from yunhan.store.resource import Event, Resource
from yunhan.store.store import DB_NAME, Liveness, Notice, Reader, Store, TokenInfo, Tx

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
