"""The pure parts of `yunhan trace --live` (yunhan.net.tracelive): what it watches, what it
reads from nft monitor and ip route get, and how it holds the probe to the model."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.test_net_trace import A1, B1, FW1, IP, S1, T_APP, World
from yunhan.net.trace import Trace
from yunhan.net.tracelive import (
    Lab,
    Live,
    LiveHop,
    Probe,
    RouteGet,
    Watch,
    agree,
    parse_events,
    parse_route_get,
    route_get_argv,
    summarise,
    trace_script,
    vpc_watches,
    watch_plan,
)

LAB = Lab(
    prefixes={"h1": "t-h1-", "h2": "t-h2-", "h3": "t-h3-"},
    host_netns={"h1": "t-h1", "h2": "t-h2", "h3": "t-h3"},
    internet_netns="t-internet",
)


def appliance() -> Trace:
    w = World(assoc={S1: T_APP}).route("rt-00000001", T_APP, "10.2.2.0/24", f"instance:{FW1}")
    return w.trace(A1, IP[B1], "tcp", 80)


def test_watch_plan_follows_the_model_then_the_other_vpc_namespaces() -> None:
    t = appliance()
    plan = watch_plan(t, LAB, vpc_watches(t, LAB))
    assert [(w.netns, w.hops) for w in plan] == [
        ("t-h1-i-0000c001", (0,)),
        ("t-h1-v300", (1,)),
        ("t-h2-v300", (2, 4)),  # in by vxlan0, then again from the appliance
        ("t-h2-i-0000cf01", (3,)),
        ("t-h2-i-0000c002", (5,)),
        ("t-h3-v300", ()),  # not on the path: watched to catch a wrong model
    ]


def test_the_trace_table_flags_only_the_probe() -> None:
    tcp = trace_script(Probe("tcp", "10.2.1.10", "10.2.2.10", 80, 41234))
    assert "tcp sport 41234 meta nftrace set 1" in tcp and "table ip yunhan_trace" in tcp
    assert "hook prerouting priority -350" in tcp and "hook output priority -350" in tcp
    icmp = trace_script(Probe("icmp", "10.2.1.10", "10.2.2.10", None, 777))
    assert "icmp type echo-request icmp id 777 meta nftrace set 1" in icmp


def test_route_get_asks_for_the_packet_as_the_model_has_it_at_each_vpc_hop() -> None:
    t = appliance()
    assert route_get_argv(t.hops[0]) is None  # an instance
    assert route_get_argv(t.hops[2]) == (
        "ip", "-j", "route", "get", "10.2.2.10", "from", "10.2.1.10", "iif", "vxlan0",
        "mark", "0x10001", "ipproto", "tcp", "dport", "80",
    )  # fmt: skip
    ok = parse_route_get("ns", 1, ["ip"], 0, '[{"dst":"10.2.2.10","dev":"vxlan0",'
                         '"gateway":"169.254.0.2","flags":["onlink"]}]', "")  # fmt: skip
    assert (ok.dev, ok.gateway, ok.type, ok.error) == ("vxlan0", "169.254.0.2", "unicast", "")
    bad = parse_route_get("ns", 1, ["ip"], 2, "", "RTNETLINK answers: Invalid argument\n")
    assert bad.error == "Invalid argument"


MONITOR = """\
add chain ip yunhan_trace ready
trace id 1a2b ip yunhan_trace t_pre packet: iif "p-0000c001" ether saddr 02:00 ip saddr 10.2.1.10
trace id 1a2b ip yunhan_trace t_pre rule tcp sport 41234 meta nftrace set 1 (verdict continue)
trace id 1a2b ip yunhan_trace t_pre policy accept
trace id 1a2b ip yunhan pre packet: iif "p-0000c001" ip saddr 10.2.1.10
trace id 1a2b ip yunhan pre rule meta mark set iifname map @port_sel (verdict continue)
trace id 1a2b ip yunhan_trace t_fwd packet: iif "p-0000c001" oif "vxlan0" ip saddr 10.2.1.10
trace id 1a2b ip yunhan_trace t_fwd policy accept
trace id 1a2b ip yunhan_trace t_post packet: oif "vxlan0" ip saddr 10.2.1.10
trace id 1a2b ip yunhan_trace t_post policy accept
trace id 9f ip other f rule ip daddr 10.2.2.10 drop (verdict drop)
"""


def test_monitor_lines_become_where_the_probe_went() -> None:
    events = parse_events(MONITOR.splitlines())
    assert len(events) == 10
    h = summarise(Watch("t-h1-v300", "h1", "vpc", (1,)), events)
    assert (h.seen, h.iifs, h.oifs, h.delivered) == (True, ("p-0000c001",), ("vxlan0",), False)
    assert h.dropped_by == "other f: ip daddr 10.2.2.10 drop"


def _live(t: Trace, **over: LiveHop) -> Live:
    """The live result a kernel doing exactly what the model says would give."""
    hops = []
    for w in watch_plan(t, LAB, vpc_watches(t, LAB)):
        model = [t.hops[i] for i in w.hops]
        last = len(t.hops) - 1
        oifs = tuple(
            dict.fromkeys(
                h.oif
                for i, h in zip(w.hops, model, strict=True)
                if h.oif and not (t.verdict == "dropped" and i == last and h.place != "instance")
            )
        )
        hop = LiveHop(
            w.netns, w.host, w.place, w.hops, bool(w.hops),
            tuple(dict.fromkeys(h.iif for h in model if h.iif)), oifs,
            t.verdict == "delivered" and last in w.hops,
        )  # fmt: skip
        hops.append(over.get(w.netns, hop))
    return Live("probe", "connected", tuple(hops), ())


def test_agreement_and_each_kind_of_disagreement() -> None:
    t = appliance()
    assert agree(t, _live(t)) == []
    good = _live(t)
    # the probe skipped the appliance
    fw = next(h for h in good.hops if h.netns == "t-h2-i-0000cf01")
    bad = _live(t, **{fw.netns: replace(fw, seen=False, iifs=(), oifs=())})
    assert agree(t, bad) == ["t-h2-i-0000cf01: the model says the probe comes here, it did not"]
    # it came, but was not forwarded
    assert agree(t, _live(t, **{fw.netns: replace(fw, oifs=())})) == [
        "t-h2-i-0000cf01: the probe left by nothing, the model says ['eth0']"
    ]
    # it showed up on a host the model does not cross
    h3 = next(h for h in good.hops if h.netns == "t-h3-v300")
    assert agree(t, _live(t, **{h3.netns: replace(h3, seen=True)})) == [
        "t-h3-v300: the probe came here, the model says it does not"
    ]
    # not delivered where the model delivers it
    dst = good.hops[-2]
    assert dst.netns == "t-h2-i-0000c002"
    assert agree(t, _live(t, **{dst.netns: replace(dst, delivered=False)})) == [
        "t-h2-i-0000c002: the model delivers the probe here, it was not delivered"
    ]


def test_the_kernel_route_lookup_is_held_to_the_model() -> None:
    t = appliance()
    live = _live(t)
    ok = RouteGet("t-h1-v300", 1, ("ip",), dev="vxlan0", gateway="169.254.0.2")
    assert agree(t, replace(live, routes=(ok,))) == []
    wrong = RouteGet("t-h2-v300", 2, ("ip",), dev="p-0000c002")
    assert agree(t, replace(live, routes=(wrong,))) == [
        "t-h2-v300 (hop 3): the kernel routes it out p-0000c002, the model out p-0000cf01"
    ]
    # a policy drop is the kernel's EINVAL (a blackhole rule), nothing else
    w = World(assoc={S1: T_APP}).policy("pr-00000001", T_APP, 10, "drop", proto="tcp")
    d = w.trace(A1, IP[B1], "tcp", 22)
    dl = _live(d)
    assert (
        agree(d, replace(dl, routes=(RouteGet("t-h1-v300", 1, (), error="Invalid argument"),)))
        == []
    )
    assert agree(d, replace(dl, routes=(RouteGet("t-h1-v300", 1, (), dev="vxlan0"),))) == [
        "t-h1-v300 (hop 2): the kernel says 'dev vxlan0', the model says policy-drop "
        "(Invalid argument)"
    ]


def test_the_lab_internet_holds_a_model_that_leaves_the_region() -> None:
    from tests.unit.test_net_trace import INTERNET
    from tests.unit.test_net_trace import S1 as SUB1
    from yunhan.net.trace import trace as model_trace

    w = World(served={SUB1}, gateway_host="h2")
    for dst, reach in ((INTERNET, True), ("203.0.113.7", False)):
        t = model_trace(w.docs(), "h1", A1, dst, "tcp", 80, w.directory(internet=None))
        assert t.verdict == "internet" and t.hops[-1].place == "internet"
        live = _live(t)
        inet = next(h for h in live.hops if h.netns == "t-internet")
        arrived = replace(inet, seen=True, iifs=("eth0",), delivered=True)
        gone = replace(inet, seen=False, iifs=(), delivered=False)
        # without the lab's internet the model is not held beyond the uplink
        assert agree(t, _live(t, **{inet.netns: arrived})) == []
        assert agree(t, _live(t, **{inet.netns: gone})) == []
        good, bad = (arrived, gone) if reach else (gone, arrived)
        assert agree(t, _live(t, **{inet.netns: good}), ("198.19.0.0/24",)) == []
        assert agree(t, _live(t, **{inet.netns: bad}), ("198.19.0.0/24",)) != []
