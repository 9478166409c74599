"""The revisioned object store: resources, one global revision, transactions, watch."""

from yunhan.store.store import DB_NAME, Liveness, Reader, Resource, Store, Tx

__all__ = ["DB_NAME", "Liveness", "Reader", "Resource", "Store", "Tx"]
