"""The revisioned object store: resources, one global revision, transactions, watch."""

from yunhan.store.resource import Event, Resource
from yunhan.store.store import DB_NAME, Liveness, Reader, Store, Tx

__all__ = ["DB_NAME", "Event", "Liveness", "Reader", "Resource", "Store", "Tx"]
