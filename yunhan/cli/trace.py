"""`yunhan trace FROM TO`: where a packet from an instance goes, and why.

The explanation is the API's (`GET /v1/trace`, the model over the hosts' documents).
`--live` also sends a real probe from the source instance and follows it through the lab
region's namespaces on this machine (yunhan.net.tracelive), then says whether the kernel
did what the model said; a disagreement is an error (exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yunhan.cli.command import Arg, Cmd, Ctx, Opt, echo
from yunhan.errors import YunhanError


def trace(ctx: Ctx) -> None:
    proto = ctx["proto"] or ("tcp" if ctx["port"] is not None else "icmp")
    c = ctx.client()
    params = {"from": ctx["src"], "to": ctx["dst"], "proto": proto, "port": ctx["port"]}
    ans: dict[str, Any] = c.get("/v1/trace", **params)
    if not ctx["live"]:
        echo(json.dumps(ans, indent=2) if ctx["as_json"] else ans["text"].rstrip("\n"))
        return
    live, diffs = _live(ans, c.endpoint, ctx["state_dir"])
    if ctx["as_json"]:
        body = {**ans, "live": live, "agree": not diffs, "disagreements": diffs}
        echo(json.dumps(body, indent=2))
    else:
        echo(ans["text"].rstrip("\n"))
        echo(live["text"].rstrip("\n"))
        echo("the live probe agrees with the model" if not diffs else "DISAGREES:")
        for d in diffs:
            echo(f"  {d}")
    if diffs:
        raise YunhanError("the live probe disagrees with the model (see above)")


def lab_record(endpoint: str, state_dir: str | None, what: str = "--live") -> Any:
    """The lab region recorded on this machine, when it is the one at `endpoint` (its
    namespaces are here to enter); LiveError otherwise."""
    from yunhan.lab.region import RegionRecord, default_state_dir
    from yunhan.net.tracelive import LiveError

    where = Path(state_dir) if state_dir else default_state_dir()
    try:
        record = RegionRecord.load(where)
    except (YunhanError, OSError, ValueError) as exc:
        raise LiveError(f"{what} needs the lab region on this machine: {exc}") from exc
    if record is None or record.endpoint.rstrip("/") != endpoint.rstrip("/"):
        raise LiveError(
            f"{what} needs the namespaces of the region at {endpoint} on this machine, and "
            f"the lab region recorded in {where} is "
            + ("none" if record is None else f"{record.prefix} at {record.endpoint}")
        )
    return record


def _live(
    ans: dict[str, Any], endpoint: str, state_dir: str | None
) -> tuple[dict[str, Any], list[str]]:
    from yunhan.net.naming import Naming
    from yunhan.net.trace import Trace
    from yunhan.net.tracelive import LiveError, Watch, agree, internet_of, lab_from_record, run

    try:
        record = lab_record(endpoint, state_dir)
    except LiveError as exc:
        raise LiveError(f"{exc} (the model trace needs no --live)") from exc
    lab = lab_from_record(record)
    model = Trace.from_json(ans)
    extra = []
    host = str(ans.get("dst_host") or "")
    if ans.get("dst_instance") and host in lab.prefixes:
        ns = Naming(lab.prefixes[host]).instance_netns(ans["dst_instance"])
        extra.append(Watch(ns, host, "instance"))
    result = run(model, lab, extra=extra)
    diffs = agree(model, result, internet_of(record))
    return {**result.to_json(), "text": result.render()}, diffs


COMMANDS: tuple[Cmd, ...] = (
    Cmd(
        "trace",
        "Explain where a packet from an instance goes: hop by hop, the policy route or "
        "route that decides (table, type, priority), the host and port it takes, the NAT "
        "applied, and the rule that drops it and why.\n\n"
        "TO is an instance (name or id), an IP address or an EIP. --live also sends a real "
        "probe (TCP connect, UDP datagram or ICMP echo) from FROM's namespace and follows "
        "it with nftables tracing and the kernel's route lookups: the lab region on this "
        "machine only, as root.",
        trace,
        (
            Arg("src", "the source instance (name or id)", metavar="FROM", complete="instance"),
            Arg("dst", "an instance (name or id), an IP address or an EIP", metavar="TO"),
            Opt(
                ("--proto",),
                "proto",
                "tcp, udp or icmp (default: tcp with --port, else icmp)",
                choices=("tcp", "udp", "icmp"),
            ),
            Opt(("--port",), "port", "destination port (tcp and udp)", int),
            Opt(("--json",), "as_json", "print JSON for scripts", bool),
            Opt(("--live",), "live", "also send a real probe and follow it (lab, root)", bool),
            Opt(
                ("--state-dir",),
                "state_dir",
                "--live: the lab region's state (env YUNHAN_HOME, default /var/lib/yunhan)",
            ),
        ),
    ),
)
