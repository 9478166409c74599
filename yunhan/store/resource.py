"""The store's value types: a stored object and the event that one write makes of it.

A leaf module (it imports nothing of ours) so that the controller's engine, the watch
cache and the store itself share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Op = Literal["put", "delete"]


@dataclass(frozen=True)
class Resource:
    """One stored object. Immutable: `Tx.update` returns the new version."""

    kind: str
    id: str
    project: str
    name: str
    spec: dict[str, Any]
    status: dict[str, Any]
    revision: int
    created_at: str
    # Key -> value, validated like Kubernetes labels by the API. The engine ignores them:
    # they select resources for people and tools, they never change a host's network.
    labels: dict[str, str] = field(default_factory=dict)

    def envelope(self) -> dict[str, Any]:
        """The JSON shape of docs/api.md."""
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "project": self.project,
            "revision": self.revision,
            "created_at": self.created_at,
            "labels": self.labels,
            "spec": self.spec,
            "status": self.status,
        }


@dataclass(frozen=True)
class Event:
    """One committed change of one object, in the store's total order.

    `revision` is the write's (several objects written together share it); `obj` is the
    object as written, or for a delete as it was last, with the delete's revision.
    """

    revision: int
    kind: str
    id: str
    op: Op
    obj: Resource
