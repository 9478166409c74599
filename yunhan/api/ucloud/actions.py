"""The actions: each one translates UCloud's parameters into calls of Yunhan's API (made
in-process, as the key's project) and Yunhan's answers into UCloud's fields.

Validation is Yunhan's own: a value Yunhan refuses is refused here with its message, so a
refusal means the same on both sides. An action that needs several writes checks what it
can first; the docs say which actions are not one write.
"""

from __future__ import annotations

from yunhan.api.ucloud import netres, udisk, uhost, vpc
from yunhan.api.ucloud.base import ActionError, Ctx, Handler

__all__ = ["ACTIONS", "INSTEAD", "ActionError", "Ctx"]

ACTIONS: dict[str, Handler] = {
    "CreateVPC": vpc.create_vpc,
    "DescribeVPC": vpc.describe_vpc,
    "DeleteVPC": vpc.delete_vpc,
    "AddVPCNetwork": vpc.add_vpc_network,
    "CreateSubnet": vpc.create_subnet,
    "DescribeSubnet": vpc.describe_subnet,
    "DeleteSubnet": vpc.delete_subnet,
    "CreateUHostInstance": uhost.create_uhost,
    "DescribeUHostInstance": uhost.describe_uhost,
    "TerminateUHostInstance": uhost.terminate_uhost,
    "StopUHostInstance": uhost.stop_uhost,
    "StartUHostInstance": uhost.start_uhost,
    "AllocateVIP": netres.allocate_vip,
    "DescribeVIP": netres.describe_vip,
    "ReleaseVIP": netres.release_vip,
    "CreateRouteTable": netres.create_route_table,
    "DescribeRouteTable": netres.describe_route_table,
    "ModifyRouteRule": netres.modify_route_rule,
    "AssociateRouteTable": netres.associate_route_table,
    "DeleteRouteTable": netres.delete_route_table,
    "AllocateEIP": netres.allocate_eip,
    "BindEIP": netres.bind_eip,
    "UnBindEIP": netres.unbind_eip,
    "DescribeEIP": netres.describe_eip,
    "ReleaseEIP": netres.release_eip,
    "CreateNATGW": netres.create_natgw,
    "DescribeNATGW": netres.describe_natgw,
    "DeleteNATGW": netres.delete_natgw,
    "CreateNATGWPolicy": netres.create_natgw_policy,
    "CreateFirewall": netres.create_firewall,
    "GrantFirewall": netres.grant_firewall,
    "DescribeFirewall": netres.describe_firewall,
    "UpdateFirewall": netres.update_firewall,
    "DeleteFirewall": netres.delete_firewall,
    "CreateUDisk": udisk.create_udisk,
    "AttachUDisk": udisk.attach_udisk,
    "DetachUDisk": udisk.detach_udisk,
    "DescribeUDisk": udisk.describe_udisk,
    "DeleteUDisk": udisk.delete_udisk,
    "RestoreUDisk": udisk.restore_udisk,
    "CloneUDisk": udisk.clone_udisk,
    "CloneUDiskUDataArk": udisk.clone_udisk_udataark,
}

# Actions a UCloud user may try that Yunhan answers with what it offers instead.
INSTEAD: dict[str, str] = {
    "RebootUHostInstance": "no reboot: StopUHostInstance then StartUHostInstance "
    "(yunhan instance stop, start)",
    "CreateUDiskSnapshot": "no snapshots: Data Ark keeps points in time (RestoreUDisk and "
    "CloneUDiskUDataArk with SnapshotTime; yunhan volume timeline)",
}
