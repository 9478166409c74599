"""`yunhan check connectivity`: the connectivity matrix of a lab region's VPCs.

Endpoints come from the API (instances that run, hybrid gateway replicas) and from the
lab's record on this machine (IDC servers, the namespaces to enter). Probes are injected
in every source's namespace at once (yunhan.net.probes); a pair that is not as expected is
explained by the model trace (`GET /v1/trace`: where it is dropped, by what rule) and, for
the first few, by the live trace, which follows a real probe through nftables and names
the rule that dropped it. Exit 1 when any pair is not as expected, so that a script (and
a confirmed commit, a route switch) can be gated on it.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yunhan.cli.command import Cmd, Ctx, Group, Opt, echo
from yunhan.errors import YunhanError

if TYPE_CHECKING:
    from yunhan.net.connectivity import Endpoint, Explanation, Matrix, Pair


class CheckFailed(YunhanError):
    code = "check_failed"


def _plain_ip(value: str) -> str:
    return str(ipaddress.IPv4Interface(value).ip)


def endpoints(c: Any, record: Any, vpc: str | None = None) -> list[Endpoint]:
    """Every endpoint of the region (of VPC `vpc`, an id, when given) that can be probed:
    running instances (not those standing by in a subnet served in the IDC), the lab
    sites' servers in the VPC's IDC subnets, and the replicas of its hybrid gateways."""
    from yunhan.lab import idc
    from yunhan.net.connectivity import Endpoint
    from yunhan.net.naming import Naming
    from yunhan.net.tracelive import existing_netns, lab_from_record

    lab = lab_from_record(record)
    have = existing_netns()
    subnets = {s["id"]: s for s in c.items("/v1/subnets")}
    out: list[Endpoint] = []
    for i in c.items("/v1/instances"):
        st, spec = i.get("status") or {}, i.get("spec") or {}
        sub = subnets.get(spec.get("subnet", ""), {})
        sspec = sub.get("spec") or {}
        if vpc and st.get("vpc") != vpc:
            continue
        if sspec.get("location") and sspec.get("serve", "idc") == "idc":
            continue  # standing by: the IDC serves its address
        host = st.get("host") or ""
        if st.get("phase") != "running" or host not in lab.prefixes or not st.get("ip"):
            continue
        ns = Naming(lab.prefixes[host]).instance_netns(i["id"])
        if ns in have:
            out.append(
                Endpoint(i["name"], "instance", st["ip"], ns, None, st["vpc"], host, i["id"])
            )
    sites = {name: s.spec for name, s in idc.load_sites(record).items()}
    for sub in subnets.values():
        sspec = sub.get("spec") or {}
        loc = str(sspec.get("location") or "")
        if not loc.startswith("idc:") or (vpc and sspec.get("vpc") != vpc):
            continue
        if sspec.get("serve", "idc") != "idc":
            continue  # served in the cloud: its instances are the endpoints
        site = sites.get(loc.split(":", 1)[1])
        if site is None:
            continue
        net = ipaddress.IPv4Network(sspec["cidr"])
        for s in site.servers:
            ip = ipaddress.IPv4Interface(s.ip).ip
            if ip in net and s.netns in have:
                name = f"idc:{site.name}/{s.name}"
                out.append(
                    Endpoint(
                        name, "idc-server", str(ip), s.netns, None, sspec["vpc"], site=site.name
                    )
                )
    for g in c.items("/v1/hybrid-gws"):
        gvpc = (g.get("spec") or {}).get("vpc", "")
        gsite = str((g.get("status") or {}).get("site_name") or "")
        if vpc and gvpc != vpc:
            continue
        for rep in (g.get("status") or {}).get("replicas") or []:
            host, line_ip = rep.get("host") or "", rep.get("line_ip")
            if host not in lab.prefixes or not line_ip:
                continue
            ns = Naming(lab.prefixes[host]).hybrid_netns(g["id"])
            if ns in have:
                line = _plain_ip(line_ip)
                name = f"gw:{g['name']}/{rep['index']}"
                out.append(Endpoint(name, "replica", line, ns, line, gvpc, host, site=gsite))
    return out


def run_matrix(
    c: Any,
    record: Any,
    pairs: Sequence[Pair],
    *,
    timeout: float = 1.5,
    live: int = 8,
) -> Matrix:
    """Probe every pair and explain those not as expected (the model trace for each with
    an instance as source, the live trace for the first `live` of them)."""
    from yunhan.net import probes
    from yunhan.net.connectivity import Matrix, Result

    sources: list[Endpoint] = []
    index: dict[str, int] = {}
    for p in pairs:
        if p.src.name not in index:
            index[p.src.name] = len(sources)
            sources.append(p.src)
    t0 = time.monotonic()
    outcomes = probes.inject(
        [probes.Source(s.netns, s.bind) for s in sources],
        [(index[p.src.name], p.dst.ip) for p in pairs],
        timeout=timeout,
    )
    seconds = time.monotonic() - t0
    results = [
        Result(p, o.reached, o.rtt_ms, o.sent, o.error, o.reply_from)
        for p, o in zip(pairs, outcomes, strict=True)
    ]
    lives = 0
    for r in results:
        if r.as_expected or r.pair.src.kind != "instance":
            continue
        r.why = explain(c, record, r.pair, live=lives < live)
        lives += 1
    return Matrix(results, seconds)


def explain(c: Any, record: Any, pair: Pair, *, live: bool) -> Explanation:
    """Where and why the model drops the pair's probe, and (live) where a real one is
    dropped and by which rule."""
    from yunhan.net.connectivity import Explanation
    from yunhan.net.naming import Naming
    from yunhan.net.trace import Trace
    from yunhan.net.tracelive import LiveError, Watch, lab_from_record, run

    try:
        ans = c.get("/v1/trace", **{"from": pair.src.ref, "to": pair.dst.ip, "proto": "icmp"})
    except YunhanError as exc:
        return Explanation(detail=f"no model trace: {exc}")
    hops = ans.get("hops") or []
    last = next((h for h in reversed(hops) if h.get("dropped")), hops[-1] if hops else {})
    where = " ".join(
        x for x in (last.get("place", ""), str(last.get("ref", "")), "on", last.get("host", ""))
    ).strip()
    why = Explanation(
        where=where if ans.get("verdict") != "delivered" else "",
        reason=str(ans.get("reason") or ans.get("verdict") or ""),
        rule=rule_of(str(ans.get("detail") or "")),
        detail=str(ans.get("detail") or ""),
    )
    if ans.get("verdict") == "delivered":
        why.reason = "beyond-the-model"
        why.detail = (
            f"the model delivers it ({ans.get('detail') or ans.get('delivered_to')}): what "
            "drops it is outside what Yunhan configures (an IDC device, the far end itself)"
        )
    if not live:
        return why
    lab = lab_from_record(record)
    extra = []
    host = str(ans.get("dst_host") or "")
    if ans.get("dst_instance") and host in lab.prefixes:
        ns = Naming(lab.prefixes[host]).instance_netns(ans["dst_instance"])
        extra.append(Watch(ns, host, "instance"))
    try:
        result = run(Trace.from_json(ans), lab, extra=extra)
    except LiveError as exc:
        why.live = f"not run: {exc}"
        return why
    drop = next((h for h in result.hops if h.dropped_by), None)
    if drop is not None:
        why.where = f"{drop.place} {drop.netns} on {drop.host}"
        why.rule = drop.dropped_by
    why.live = result.render()
    return why


def rule_of(detail: str) -> str:
    """The rule a model trace's detail names ("… ingress rule sgr-… denies it", "ip rule
    10100 blackhole"), else ""."""
    words = [w.strip("(),:;") for w in detail.split()]
    for i, w in enumerate(words[:-1]):
        if w != "rule":
            continue
        head = words[i - 1] if i and words[i - 1] in ("ingress", "egress", "ip") else ""
        return " ".join(x for x in (head, "rule", words[i + 1]) if x)
    return ""


def connectivity(ctx: Ctx) -> None:
    from yunhan.cli.trace import lab_record
    from yunhan.cli.views import output_format
    from yunhan.net.connectivity import PairsError, default_pairs, read_pairs

    fmt = output_format(ctx["output"], ctx["as_json"])
    c = ctx.client()
    record = lab_record(c.endpoint, ctx["state_dir"], "check connectivity")
    vpc = c.get(f"/v1/vpcs/{ctx['vpc']}")["id"] if ctx["vpc"] else None
    eps = endpoints(c, record, vpc)
    if ctx["pairs"]:
        try:
            pairs = read_pairs(Path(ctx["pairs"]).read_text(), eps)
        except OSError as exc:
            raise YunhanError(f"cannot read {ctx['pairs']}: {exc.strerror}") from exc
        except PairsError as exc:
            raise YunhanError(f"{ctx['pairs']}: {exc}") from exc
    else:
        pairs = default_pairs(eps)
        if not pairs:
            where = f" in VPC {ctx['vpc']}" if ctx["vpc"] else ""
            raise YunhanError(f"no two endpoints to check{where} (running instances, IDC servers)")
    m = run_matrix(c, record, pairs, timeout=ctx["timeout"], live=ctx["live_max"])
    m.endpoints = eps
    if fmt == "json":
        echo(json.dumps(m.to_json(), indent=2))
    else:
        echo(m.render().rstrip("\n"))
    if m.failures:
        raise CheckFailed(f"{len(m.failures)} of {len(m.results)} pairs are not as expected")


CHECK = Group(
    "check",
    "Checks of the region as it runs",
    (
        Cmd(
            "connectivity",
            "Check which endpoints reach which: an ICMP echo injected in every source's "
            "namespace (instances, IDC servers, hybrid gateway replicas on their line) to "
            "every destination of its VPC, all at once, with the round-trip time; a pair "
            "not reached is explained by the model trace and the live one (where it was "
            "dropped, by which rule). --pairs FILE lists pairs as `SRC DST [reach|drop]` "
            "(an instance's name, idc:SITE/SERVER, gw:NAME/INDEX, or an address as DST). "
            "Exits 1 when a pair is not as expected. The lab region on this machine only, "
            "as root.",
            connectivity,
            (
                Opt(("--vpc",), "vpc", "only this VPC's endpoints", complete="vpc"),
                Opt(("--pairs",), "pairs", "the pairs to check (default: every pair)"),
                Opt(("-o", "--output"), "output", "output format", choices=("table", "json")),
                Opt(("--json",), "as_json", "print JSON for scripts (same as -o json)", bool),
                Opt(
                    ("--timeout",),
                    "timeout",
                    "seconds to wait for answers after the last retry",
                    float,
                    default=1.5,
                ),
                Opt(
                    ("--live-max",),
                    "live_max",
                    "explain at most this many failed pairs with a live trace",
                    int,
                    default=8,
                ),
                Opt(
                    ("--state-dir",),
                    "state_dir",
                    "the lab region's state (env YUNHAN_HOME, default /var/lib/yunhan)",
                ),
            ),
        ),
    ),
)
COMMANDS: tuple[Group, ...] = (CHECK,)
