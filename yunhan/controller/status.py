"""Reflect what an agent reports about its instances into their status (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PHASES = ("pending", "scheduled", "running", "failed")


def reflect(status: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """The instance status after its host reported `report` (phase, message, netns, uts).

    Only the fields the agent owns change; an unknown phase is kept out of `phase` (the
    contract lists four) and shown in `message` so that nothing reported is lost.
    """
    new = dict(status)
    phase = report.get("phase")
    message = report.get("message")
    if phase in PHASES:
        new["phase"] = phase
    elif phase:
        message = f"agent reported phase {phase!r}" + (f": {message}" if message else "")
    new["message"] = message
    for key in ("netns", "uts"):
        if key in report:
            new[key] = report[key]
    return new
