"""The load index the scheduler reads (controller/loads.py) against a brute-force count."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from yunhan.controller.loads import HostLoads
from yunhan.store import Event, Resource

HOSTS = ["h1", "h2", "h3", "h4"]
ZONES = ["z1", "z2"]
SICK = {"h1", "h3"}


def _host(name: str, zone: str, rev: int) -> Resource:
    return Resource("host", f"host-{name}", "admin", name, {"zone": zone}, {}, rev, "")


def _inst(i: int, host: str | None, rev: int) -> Resource:
    return Resource("instance", f"inst-{i:08x}", "p", f"i{i}", {}, {"host": host}, rev, "")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("host"), st.sampled_from(HOSTS), st.sampled_from(ZONES)),
        st.tuples(st.just("put"), st.integers(0, 12), st.sampled_from([*HOSTS, "ghost", None])),
        st.tuples(st.just("del"), st.integers(0, 12), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_lightest_hosts_and_counts_match_a_recount(steps: list[tuple[str, object, object]]) -> None:
    loads = HostLoads()
    loads.load(0, [])
    hosts: dict[str, str] = {}
    where: dict[int, str | None] = {}
    for rev, (op, a, b) in enumerate(steps, 1):
        if op == "host":
            name, zone = str(a), str(b)
            hosts[name] = zone
            loads.apply(rev, [Event(rev, "host", f"host-{name}", "put", _host(name, zone, rev))])
        elif op == "put":
            i = int(str(a))
            host = None if b is None else str(b)
            where[i] = host
            loads.apply(rev, [Event(rev, "instance", f"inst-{i:08x}", "put", _inst(i, host, rev))])
        elif int(str(a)) in where:
            i = int(str(a))
            gone = _inst(i, where.pop(i), rev)
            loads.apply(rev, [Event(rev, "instance", gone.id, "delete", gone)])
    count = {h: sum(1 for x in where.values() if x == h) for h in [*HOSTS, "ghost"]}
    for h in hosts:
        assert loads.count(h) == count[h]
    for zone in ZONES:
        want = sorted((count[h], h) for h, z in hosts.items() if z == zone)
        assert loads.lightest(zone, lambda _h: True, k=10) == [h for _c, h in want]
        # Healthy hosts come first, each group in (load, name) order.
        got = loads.lightest(zone, lambda h: h not in SICK, k=10)
        assert got == [h for _c, h in want if h not in SICK] + [h for _c, h in want if h in SICK]
    # A reload from the same objects gives the same answers (incremental == full).
    full = HostLoads()
    full.load(
        0,
        [_host(h, z, 0) for h, z in hosts.items()] + [_inst(i, h, 0) for i, h in where.items()],
    )
    for zone in ZONES:
        assert full.lightest(zone, lambda _h: True, k=10) == loads.lightest(
            zone, lambda _h: True, k=10
        )
