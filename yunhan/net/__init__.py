"""The host data plane (ARCHITECTURE §2): what a host must carry, and the drivers that make it so.

    desired   HostDesired: the controller -> agent contract (plain data)
    naming    names of everything we create, under one prefix
    state     the data plane as a flat map of kernel objects; compile_state(); plan()
    driver    the Driver interface (observe / apply one op) and the executor
    linux     the real driver: pyroute2 netlink into each namespace, nftables
    nft       port anti-spoofing chains, libnftables over ctypes
    nsutil    setns/unshare/mount on a short-lived thread (no fork)
    fake      the in-memory driver and FakeFabric (packet traces between fake hosts)
    world     small hand-written worlds -> HostDesired documents, for tests and simulations

The agent uses all of this through `yunhan.agent.dataplane.DataPlane`.
"""
