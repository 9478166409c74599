"""Names of what an agent creates on its host, all under one prefix (STYLE §7).

On a real host the prefix is "yh-"; in the lab it is "<region>-<host>-" so that the hosts
of a lab region, all on one machine, never collide, and a sweep finds every orphan by prefix.
Interface names live inside our own namespaces, so they stay short and fixed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Naming:
    prefix: str = "yh-"

    def vpc_netns(self, vni: int) -> str:
        return f"{self.prefix}v{vni}"

    def instance_netns(self, instance_id: str) -> str:
        return f"{self.prefix}i-{short_id(instance_id)}"

    def natgw_netns(self, natgw_id: str) -> str:
        """The namespace of a NAT gateway running on this host."""
        return f"{self.prefix}g-{short_id(natgw_id)}"

    def hybrid_netns(self, hybrid_gw_id: str) -> str:
        """The namespace of a hybrid gateway's replica running on this host."""
        return f"{self.prefix}h-{short_id(hybrid_gw_id)}"

    def owns(self, netns: str) -> bool:
        return netns.startswith(self.prefix)


VXLAN_IFNAME = "vxlan0"
INSTANCE_IFNAME = "eth0"


def short_id(resource_id: str) -> str:
    """The random part of a resource id ("inst-3fa9c2d1" -> "3fa9c2d1")."""
    return resource_id.rsplit("-", 1)[-1]


def port_ifname(instance_id: str) -> str:
    return f"p-{short_id(instance_id)}"


def gateway_ifname(natgw_id: str) -> str:
    """A NAT gateway's port in the VPC namespace."""
    return f"g-{short_id(natgw_id)}"


def natgw_host_ifname(natgw_id: str) -> str:
    """A NAT gateway's link in the host namespace (the public side)."""
    return f"n-{short_id(natgw_id)}"


def hybrid_ifname(hybrid_gw_id: str) -> str:
    """A hybrid gateway's port in the VPC namespace (where a replica of it runs)."""
    return f"h-{short_id(hybrid_gw_id)}"
