"""Request bodies of the HTTP API (docs/api.md), as pydantic models.

They check shapes and types only; the rules that need neighbours (overlaps, addresses in
use) live in `yunhan.model.network` and run inside the store transaction.
Unknown fields are ignored so that newer clients keep working against this server.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ProjectCreate(_Body):
    name: str


class ZoneCreate(_Body):
    name: str
    underlay_cidr: str


class VpcCreate(_Body):
    name: str
    cidrs: list[str] = Field(min_length=1)


class VpcCidrAdd(_Body):
    cidr: str


class SubnetCreate(_Body):
    name: str
    vpc: str
    cidr: str


class InstanceCreate(_Body):
    name: str
    subnet: str
    zone: str
    ip: str | None = None
    command: list[str] | None = None


class HostRegister(_Body):
    zone: str
    underlay_ip: str
    mtu: int = 1500


class InstanceReport(_Body):
    phase: str | None = None
    message: str | None = None
    netns: str | None = None
    uts: str | None = None


class HostStatusReport(_Body):
    applied_revision: int = Field(ge=0, le=2**63 - 1)  # a SQLite INTEGER
    error: str | None = None
    instances: dict[str, InstanceReport] = Field(default_factory=dict)
