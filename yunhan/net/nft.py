"""Port anti-spoofing with nftables: rule rendering (pure) and libnftables over ctypes.

Why libnftables through ctypes rather than `nft -j -f -`: the agent applies and observes
filters on every pass, for every VPC namespace; the library saves a fork+exec (and an
`ip netns exec`) per call, takes and returns the same JSON the binary does, and a batch is
one atomic netlink transaction either way. The library's netlink socket is opened in the
calling thread's network namespace, so each call runs on a short thread that has entered
the VPC namespace (`nsutil.run_in`). libnftables1 is a dependency of the nft binary, so
nothing extra is installed.

Layout inside each VPC namespace: table `netdev yunhan`; one base chain per port, named
after the port, hooked at ingress of the host-side veth (frames the instance sends). Each
rule carries a comment naming its purpose; observation reads the port's MAC and allowed
IPs back from the rules themselves, so a rule changed by hand is seen as drift.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from typing import Any

from yunhan.errors import DriverError
from yunhan.net import nsutil

TABLE = "yunhan"
FAMILY = "netdev"
_RULE_TAGS = ("mac", "ip", "arp-mac", "arp-ip", "proto")
# ARP probes (RFC 5227, `arping -D`) carry sender IP 0.0.0.0; they poison no cache.
_ARP_PROBE_SRC = "0.0.0.0"

_lib: ctypes.CDLL | None = None


def _nft() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _lib = lib
    return _lib


_NFT_CTX_OUTPUT_JSON = 1 << 4


def run(
    netns: str,
    cmd: dict[str, Any] | str,
    run_in: Callable[[Callable[[], object]], object] | None = None,
) -> dict[str, Any]:
    """Run one nft command (JSON document or text) inside `netns`; return the JSON output.

    Raises DriverError with the library's message; the errno is lost by libnftables, so
    ENOENT is inferred from its "No such file or directory" text.
    """
    text = json.dumps(cmd) if isinstance(cmd, dict) else cmd

    def body() -> tuple[int, str, str]:
        lib = _nft()
        ctx = lib.nft_ctx_new(0)
        try:
            lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = lib.nft_run_cmd_from_buffer(ctx, text.encode())
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
            return rc, out, err
        finally:
            lib.nft_ctx_free(ctx)

    try:
        if run_in is not None:
            rc, out, err = run_in(body)  # type: ignore[misc]
        else:
            rc, out, err = nsutil.run_in(body, net=netns)
    except OSError as exc:
        raise DriverError(f"nft in {netns}: {exc.strerror}", errno=exc.errno, netns=netns) from exc
    if rc != 0:
        eno = 2 if "No such file or directory" in err else None
        raise DriverError(f"nft in {netns}: {err.strip()}", errno=eno, netns=netns)
    return json.loads(out) if out.strip() else {}


def _set(values: list[str]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def _match(left: Any, op: str, right: Any) -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def chain_rules(
    ifname: str, mac: str, ips: tuple[str, ...], forwarder: bool = False
) -> list[dict[str, Any]]:
    """The rule bodies of a port's chain: drop anything the port may not send.

    Allowed: frames from the port's MAC carrying IPv4 from its IP (or an allowed IP, a
    VIP) and ARP whose sender MAC and IP are its own, so an instance cannot answer ARP for
    another instance's address. Every other ethertype (IPv6, VLAN tags, ...) is dropped.
    A forwarder (the next hop of a route) sends others' packets: its chain has no IPv4
    source rule, the MAC and ARP rules stay.
    """
    proto = {"meta": {"key": "protocol"}}

    def rule(tag: str, *expr: dict[str, Any]) -> dict[str, Any]:
        return {
            "family": FAMILY,
            "table": TABLE,
            "chain": ifname,
            "comment": tag,
            "expr": [*expr, {"drop": None}],
        }

    ip_list = list(ips)
    arp_list = sorted({_ARP_PROBE_SRC, *ip_list}, key=_ip_key)
    rules = [
        rule("mac", _match({"payload": {"protocol": "ether", "field": "saddr"}}, "!=", mac)),
        rule(
            "ip",
            _match(proto, "==", "ip"),
            _match({"payload": {"protocol": "ip", "field": "saddr"}}, "!=", _set(ip_list)),
        ),
        rule(
            "arp-mac",
            _match(proto, "==", "arp"),
            _match({"payload": {"protocol": "arp", "field": "saddr ether"}}, "!=", mac),
        ),
        rule(
            "arp-ip",
            _match(proto, "==", "arp"),
            _match({"payload": {"protocol": "arp", "field": "saddr ip"}}, "!=", _set(arp_list)),
        ),
        rule("proto", _match(proto, "!=", {"set": ["ip", "arp"]})),
    ]
    return [r for r in rules if not (forwarder and r["comment"] == "ip")]


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ip.split("."))


def chain_batch(
    ifname: str, mac: str, ips: tuple[str, ...], *, exists: bool, forwarder: bool = False
) -> dict[str, Any]:
    """One atomic transaction that (re)creates a port's chain with its rules.

    A chain that exists is deleted and re-added in the same batch rather than flushed, so
    its ingress hook is bound afresh to the current device of that name (the port may
    have been re-created since).
    """
    chain = {
        "family": FAMILY,
        "table": TABLE,
        "name": ifname,
        "type": "filter",
        "hook": "ingress",
        "dev": ifname,
        "prio": 0,
        "policy": "accept",
    }
    cmds: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    if exists:
        cmds.append({"delete": {"chain": {"family": FAMILY, "table": TABLE, "name": ifname}}})
    cmds.append({"add": {"chain": chain}})
    cmds.extend({"add": {"rule": r}} for r in chain_rules(ifname, mac, ips, forwarder))
    return {"nftables": cmds}


def delete_chain_cmd(ifname: str) -> dict[str, Any]:
    return {"nftables": [{"delete": {"chain": {"family": FAMILY, "table": TABLE, "name": ifname}}}]}


BROKEN = ("<broken>",)


def parse_table(listing: dict[str, Any]) -> dict[str, tuple[str, tuple[str, ...], bool]]:
    """chain name -> (mac, ips, forwarder) read back from a `list table` JSON listing.

    A chain whose rules are not exactly ours (one missing, MAC of the ARP rule differing,
    the ARP set not matching the IP set) reads as ips == BROKEN, which never equals a
    desired filter, so the next apply rewrites it.
    """
    rules: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    chains: list[str] = []
    for item in listing.get("nftables", []):
        if "chain" in item:
            chains.append(item["chain"]["name"])
        elif "rule" in item:
            r = item["rule"]
            counts[r["chain"]] = counts.get(r["chain"], 0) + 1
            tag = r.get("comment")
            if tag:
                rules.setdefault(r["chain"], {})[tag] = r["expr"]
    out: dict[str, tuple[str, tuple[str, ...], bool]] = {}
    for name in chains:
        tagged = rules.get(name, {})
        # A forwarder's chain is the same without the IPv4 source rule.
        forwarder = "ip" not in tagged
        tags = set(_RULE_TAGS) - ({"ip"} if forwarder else set())
        try:
            if counts.get(name, 0) != len(tags) or set(tagged) != tags:
                raise ValueError
            mac = _right(tagged["mac"], "saddr")
            arp_mac = _right(tagged["arp-mac"], "saddr ether")
            arp_ips = _as_list(_right(tagged["arp-ip"], "saddr ip"))
            if forwarder:
                ips = [ip for ip in arp_ips if ip != _ARP_PROBE_SRC]
            else:
                ips = _as_list(_right(tagged["ip"], "saddr"))
            if arp_mac != mac or set(arp_ips) != {_ARP_PROBE_SRC, *ips}:
                raise ValueError
            ips = sorted(ips, key=_ip_key)
            # The whole rule, verdict included, must be ours: a `drop` turned into
            # `accept`, or IPv6 added to the protocol set, reads the same MAC and IPs.
            for want in chain_rules(name, str(mac), tuple(ips), forwarder):
                if _norm(tagged[want["comment"]]) != _norm(want["expr"]):
                    raise ValueError
            out[name] = (str(mac), tuple(ips), forwarder)
        except (KeyError, ValueError, TypeError):
            out[name] = ("", BROKEN, False)
    return out


def _norm(expr: list[dict[str, Any]]) -> list[Any]:
    """A rule's expressions, comparable between what we send and what nft lists: the
    implied `meta protocol ==` dependencies dropped, set elements sorted."""
    out: list[Any] = []
    for i, e in enumerate(expr):
        m = e.get("match") if isinstance(e, dict) else None
        if m is not None and m.get("left") == {"meta": {"key": "protocol"}} and m["op"] == "==":
            nxt = expr[i + 1].get("match") if i + 1 < len(expr) else None
            left = nxt.get("left") if isinstance(nxt, dict) else None
            if isinstance(left, dict) and left.get("payload", {}).get("protocol") == m["right"]:
                continue  # implied by the payload match that follows
        if m is not None and isinstance(m.get("right"), dict) and "set" in m["right"]:
            e = {"match": {**m, "right": {"set": sorted(str(x) for x in m["right"]["set"])}}}
        out.append(e)
    return out


def _right(expr: list[dict[str, Any]], field: str) -> Any:
    for e in expr:
        m = e.get("match")
        if m and isinstance(m["left"], dict) and m["left"].get("payload", {}).get("field") == field:
            if m["op"] != "!=":
                raise ValueError
            return m["right"]
    raise KeyError(field)


def _as_list(right: Any) -> list[str]:
    if isinstance(right, str):
        return [right]
    if isinstance(right, dict) and "set" in right:
        return [str(x) for x in right["set"]]
    raise ValueError(right)
