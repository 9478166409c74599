"""The connectivity matrix: which endpoints of a VPC reach which, checked by real probes.

Endpoints are the places traffic starts and ends: instances (their namespaces), IDC
servers (the lab site's server namespaces) and hybrid gateway replicas (their namespace,
by their address on the line). Pure: planning the pairs, reading a pairs file, the
expectations, and rendering; the probes are `yunhan.net.probes`, the explanations of a
failed pair (the model trace and the live one) the CLI's.

A replica is probed on its line only, toward and from the IDC's endpoints: the VPC
cannot address a replica (its VPC side is a link address every replica shares), and a
probe from an instance to an IDC server crosses one replica of the ECMP set only, so
probing each replica's line is what shows that every one of them works.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["instance", "idc-server", "replica", "address"]
Expect = Literal["reach", "drop"]
OK, FAIL = "✓", "✗"


class PairsError(ValueError):
    """A pairs file that cannot be used: the line and the reason."""


@dataclass(frozen=True)
class Endpoint:
    """Something that sends and answers probes. `name` is how pairs name it: an instance's
    name, `idc:SITE/SERVER`, `gw:NAME/INDEX`; an "address" endpoint is only a destination
    (an EIP, an address outside the VPC)."""

    name: str
    kind: Kind
    ip: str
    netns: str = ""
    bind: str | None = None  # the source address to send from (a replica's line address)
    vpc: str = ""
    host: str = ""
    ref: str = ""  # the instance's id (model traces start there)
    site: str = ""  # an IDC server's site, the site a replica's line goes to

    @property
    def idc_side(self) -> bool:
        return self.kind in ("idc-server", "replica")


@dataclass(frozen=True)
class Pair:
    src: Endpoint
    dst: Endpoint
    expect: Expect = "reach"


@dataclass
class Explanation:
    """Why a pair was not reached, from the model trace and the live probe."""

    where: str = ""  # "vpc v100 on h1", "instance b (port …)"
    reason: str = ""  # the model's reason: security-group, no-route, …
    rule: str = ""  # the rule that decided: the model's detail, the live drop's rule
    detail: str = ""
    live: str = ""  # what the live trace saw ("" when not run)


@dataclass
class Result:
    pair: Pair
    reached: bool
    rtt_ms: float | None
    sent: int
    error: str = ""
    reply_from: str = ""
    why: Explanation | None = None

    @property
    def as_expected(self) -> bool:
        return self.reached == (self.pair.expect == "reach")

    def to_json(self) -> dict[str, Any]:
        return {
            "src": self.pair.src.name,
            "dst": self.pair.dst.name,
            "src_kind": self.pair.src.kind,
            "src_netns": self.pair.src.netns,
            "src_ip": self.pair.src.bind or self.pair.src.ip,
            "dst_kind": self.pair.dst.kind,
            "dst_ip": self.pair.dst.ip,
            "expect": self.pair.expect,
            "reached": self.reached,
            "as_expected": self.as_expected,
            "rtt_ms": self.rtt_ms,
            "sent": self.sent,
            "error": self.error,
            "reply_from": self.reply_from,
            "why": asdict(self.why) if self.why else None,
        }


def default_pairs(endpoints: Sequence[Endpoint]) -> list[Pair]:
    """Every ordered pair of one VPC's endpoints, but a replica only with the IDC's
    endpoints (see the module's docstring) and never with another replica."""
    out = []
    for s in endpoints:
        if s.kind == "address":
            continue
        for d in endpoints:
            if d is s or d.vpc != s.vpc or (s.kind == "replica" and d.kind == "replica"):
                continue
            if (s.kind == "replica" and d.kind != "idc-server") or (
                d.kind == "replica" and s.kind != "idc-server"
            ):
                continue
            out.append(Pair(s, d))
    return out


def read_pairs(text: str, endpoints: Sequence[Endpoint]) -> list[Pair]:
    """Pairs from a file: one per line, `SRC DST [reach|drop]`, `#` comments. SRC names an
    endpoint; DST names one or is an IPv4 address. A bad line is refused whole
    (PairsError names it), so a typo never shrinks a check silently."""
    by_name: dict[str, Endpoint] = {}
    for e in endpoints:
        by_name.setdefault(e.name, e)
        if e.ref:
            by_name.setdefault(e.ref, e)
    out: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) not in (2, 3):
            raise PairsError(f"line {n}: want `SRC DST [reach|drop]`, got {raw.strip()!r}")
        expect = words[2] if len(words) == 3 else "reach"
        if expect not in ("reach", "drop"):
            raise PairsError(f"line {n}: the expectation is reach or drop, not {expect!r}")
        src = by_name.get(words[0])
        if src is None or src.kind == "address":
            raise PairsError(f"line {n}: no endpoint {words[0]!r} to send from{_known(by_name)}")
        dst = by_name.get(words[1])
        if dst is None:
            try:
                ip = str(ipaddress.IPv4Address(words[1]))
            except ValueError:
                raise PairsError(
                    f"line {n}: {words[1]!r} is neither an endpoint nor an IPv4 address"
                    f"{_known(by_name)}"
                ) from None
            dst = Endpoint(ip, "address", ip, vpc=src.vpc)
        if dst is src:
            raise PairsError(f"line {n}: {words[0]} to itself")
        key = (src.name, dst.ip)
        if key in seen:
            raise PairsError(f"line {n}: {src.name} -> {dst.name} is already listed")
        seen.add(key)
        out.append(Pair(src, dst, expect))  # type: ignore[arg-type]
    if not out:
        raise PairsError("the pairs file lists no pair")
    return out


def _known(by_name: dict[str, Endpoint]) -> str:
    names = sorted({e.name for e in by_name.values()})
    if not names:
        return " (there are no endpoints)"
    shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
    return f" (endpoints: {shown})"


@dataclass
class Matrix:
    results: list[Result]
    seconds: float = 0.0
    endpoints: list[Endpoint] = field(default_factory=list)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if not r.as_expected]

    def to_json(self) -> dict[str, Any]:
        return {
            "pairs": len(self.results),
            "reached": sum(r.reached for r in self.results),
            "not_as_expected": len(self.failures),
            "seconds": round(self.seconds, 3),
            "results": [r.to_json() for r in self.results],
        }

    def render(self) -> str:
        """A grid (sources as rows, destinations as columns) when it fits, then every
        pair that is not as expected with its explanation."""
        lines: list[str] = []
        srcs = _unique(r.pair.src.name for r in self.results)
        dsts = _unique(r.pair.dst.name for r in self.results)
        cell = {(r.pair.src.name, r.pair.dst.name): r for r in self.results}
        if len(dsts) <= 16:
            w = max(len(s) for s in srcs) if srcs else 4
            cols = [max(len(d), 3) for d in dsts]
            head = "  ".join(d.ljust(c) for d, c in zip(dsts, cols, strict=True))
            lines.append(" " * (w + 2) + head)
            for s in srcs:
                row = []
                for d, c in zip(dsts, cols, strict=True):
                    r = cell.get((s, d))
                    mark = "" if r is None else _mark(r)
                    row.append(mark.ljust(c))
                lines.append(f"{s.ljust(w)}  " + "  ".join(row).rstrip())
            lines.append(
                f"{OK} reached  {FAIL} not reached  (!) not as expected  "
                "(expected drops shown as ✗ without !)"
            )
        reached = sum(r.reached for r in self.results)
        rtts = sorted(r.rtt_ms for r in self.results if r.rtt_ms is not None)
        p50 = f", rtt p50 {rtts[len(rtts) // 2]:.2f} ms" if rtts else ""
        lines.append(
            f"{len(self.results)} pairs in {self.seconds:.2f} s: {reached} reached, "
            f"{len(self.results) - reached} not{p50}; {len(self.failures)} not as expected"
        )
        for r in self.failures:
            lines.extend(_explain(r))
        return "\n".join(lines) + "\n"


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _mark(r: Result) -> str:
    m = OK if r.reached else FAIL
    return m if r.as_expected else f"{m}(!)"


def _explain(r: Result) -> list[str]:
    p = r.pair
    want = "should reach" if p.expect == "reach" else "should be dropped"
    got = f"reached in {r.rtt_ms} ms" if r.reached else "not reached"
    out = [f"{p.src.name} -> {p.dst.name} ({p.dst.ip}): {got}, {want}"]
    if r.error:
        out.append(f"  probe: {r.error}")
    if r.reply_from:
        out.append(f"  a reply came from {r.reply_from}, not from {p.dst.ip}")
    w = r.why
    if w is not None:
        if w.where or w.reason:
            out.append(f"  dropped at {w.where or '?'}: {w.reason or '?'}")
        if w.rule:
            out.append(f"  rule: {w.rule}")
        if w.detail and w.detail != w.rule:
            out.append(f"  model: {w.detail}")
        if w.live:
            out.extend(f"  live: {line}" for line in w.live.rstrip("\n").splitlines())
    return out
