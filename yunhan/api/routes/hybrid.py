"""Hybrid cloud: IDC sites, hybrid gateways, and the route switch (docs/hybrid.md).

IDC sites are the operator's (admin writes, every project reads, as with zones): the lab
registers one with `yunhan lab idc add`. A hybrid gateway joins a VPC to the site whose
router is its `idc_peer`; the controller runs its replicas on distinct hosts and their
agents report each replica's BGP session here (`POST /v1/agent/hosts/{name}/hybrid`), which
is what decides which replicas the VPC's hosts send to. A route switch moves where an IDC
subnet is served (the IDC or the cloud) with one write; every host and replica follows.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from yunhan.api.conventions import (
    IdempotencyDep,
    IfMatch,
    Optional,
    PageDep,
    check_if_match,
    errors,
    paginate,
)
from yunhan.api.deps import AdminDep, AgentDep, CallerDep, state_of
from yunhan.api.views import resolve
from yunhan.controller.tables import take_index
from yunhan.errors import Conflict, NotFound, ValidationError
from yunhan.model import new_id, validate_name
from yunhan.model.hybrid import (
    CLOUD,
    DEFAULT_ASN,
    IDC,
    MAX_REPLICAS,
    announced,
    served_in_idc,
    validate_asn,
    validate_site,
)
from yunhan.model.schemas import Bool, Int, Name, Number, _Body, _Create
from yunhan.net.frr import check_secret
from yunhan.store import Reader, Resource

router = APIRouter(prefix="/v1", tags=["hybrid"])

NameFilter = Annotated[str | Optional, Query(description="only the one with this name")]


class IdcSitePut(_Body):
    cidrs: list[str] = Field(min_length=1, description="the ranges the site holds")
    asn: Int = Field(description="the site router's AS number")
    router_ip: str = Field(description="the site router's address on the line")
    line_cidr: str = Field(description="the line's subnet (the router and the replicas)")
    line_vni: Int = Field(description="the line's VXLAN VNI (UDP 8472)")
    line_vtep: str = Field(description="the underlay address of the line's far end")


class HybridGwCreate(_Create):
    name: Name
    vpc: str
    idc_peer: str = Field(description="the IDC router's address on the line (selects the site)")
    peer_asn: Int
    asn: Int = Field(DEFAULT_ASN, description="ours, announced to the IDC")
    replicas: Int = Field(2, ge=1, le=MAX_REPLICAS)
    md5_secret: str | None = Field(None, min_length=1, max_length=80)
    bfd: Bool = True


class HybridGwScale(_Body):
    replicas: Int = Field(ge=1, le=MAX_REPLICAS)


class HybridSwitch(_Body):
    prefix: str
    to: str = Field(pattern="^(cloud|idc)$")
    dry_run: Bool = False


class ReplicaReport(_Body):
    gateway: str
    index: Int
    state: str = Field(description="the BGP state: Established, Active, Connect, Idle, down")
    reason: str = ""
    since: Number | None = None
    bfd: str | None = None
    learned: list[dict[str, Any]] = Field(default_factory=list)
    announced: list[str] = Field(default_factory=list)


class ReplicaReports(_Body):
    replicas: list[ReplicaReport]


def _site_view(s: Resource) -> dict[str, Any]:
    return s.envelope()


def _gw_view(g: Resource) -> dict[str, Any]:
    """A gateway as the API shows it: its secret never leaves the store."""
    env = g.envelope()
    spec = dict(env["spec"])
    spec["md5"] = bool(spec.pop("md5_secret", None))
    env["spec"] = spec
    return env


# -- IDC sites ---------------------------------------------------------------------------


@router.put("/idc-sites/{ref}", responses=errors(403, 409, 422))
def put_site(ref: str, body: IdcSitePut, request: Request, response: Response, c: AdminDep) -> Any:
    """Register (201) or update (200) the IDC site named `ref` (one path, one parameter
    name, for all its methods). Its ranges may not shrink under a subnet located in it."""
    st = state_of(request)
    name = validate_name("idc_site", ref)
    validate_asn(body.asn, "asn")
    cidrs, router_ip, line, vtep = validate_site(
        body.cidrs, body.router_ip, body.line_cidr, body.line_vni, body.line_vtep
    )
    spec = {
        "cidrs": cidrs,
        "asn": body.asn,
        "router_ip": router_ip,
        "line_cidr": line,
        "line_vni": body.line_vni,
        "line_vtep": vtep,
    }
    with st.store.transaction() as tx:
        old = tx.by_name("idc_site", st.admin_project_id, name)
        for s in tx.list("idc_site", st.admin_project_id):
            if s.name == name:
                continue
            if s.spec["line_cidr"] == line or s.spec["line_vni"] == body.line_vni:
                raise Conflict(
                    f"site {s.name} already uses line {line} / VNI {body.line_vni}", site=s.name
                )
        if old is None:
            response.status_code = 201
            return _site_view(
                tx.create("idc_site", new_id("idc_site"), st.admin_project_id, name, spec, {})
            )
        for sub in _subnets_in_site(tx, old.name):
            if not any(
                ipaddress.IPv4Network(sub.spec["cidr"]).subnet_of(ipaddress.IPv4Network(c))
                for c in cidrs
            ):
                raise Conflict(
                    f"subnet {sub.name} ({sub.spec['cidr']}) is located in site {name}, outside "
                    "the new ranges; move or delete it first",
                    subnet=sub.name,
                )
        return _site_view(tx.update(old, spec=spec))


def _subnets_in_site(r: Reader, site: str) -> list[Resource]:
    return [s for s in r.list("subnet") if s.spec.get("location") == f"{IDC}:{site}"]


@router.get("/idc-sites", responses=errors(422))
def list_sites(request: Request, _: CallerDep, page: PageDep, name: NameFilter = None) -> Any:
    st = state_of(request)
    with st.store.read() as r:
        return paginate(
            r.list("idc_site", st.admin_project_id),
            page,
            r.revision,
            _site_view,
            lambda o: name is None or o.name == name,
        )


@router.get("/idc-sites/{ref}", responses=errors(404))
def get_site(ref: str, request: Request, _: CallerDep) -> Any:
    st = state_of(request)
    with st.store.read() as r:
        return _site_view(resolve(r, "idc_site", st.admin_project_id, ref))


@router.delete("/idc-sites/{ref}", responses=errors(403, 404, 409))
def delete_site(ref: str, request: Request, c: AdminDep) -> Any:
    """Forget a site; refused while a subnet is located in it or a gateway joins it."""
    st = state_of(request)
    with st.store.transaction() as tx:
        site = resolve(tx, "idc_site", st.admin_project_id, ref)
        subs = [s.name for s in _subnets_in_site(tx, site.name)]
        gws = [g.name for g in tx.list("hybrid_gw") if g.spec.get("site") == site.id]
        if subs or gws:
            raise Conflict(
                f"IDC site {site.name} is in use: subnet(s) {', '.join(subs) or '-'}, hybrid "
                f"gateway(s) {', '.join(gws) or '-'}; delete them first",
                subnets=subs,
                gateways=gws,
            )
        return _site_view(tx.delete(site))


def site_of_location(r: Reader, admin_project: str, site: str) -> Resource:
    """The site a subnet's `idc:SITE` names (404 with what exists otherwise)."""
    found = r.by_name("idc_site", admin_project, site)
    if found is None:
        have = ", ".join(s.name for s in r.list("idc_site", admin_project)) or "none"
        raise NotFound(f"IDC site {site} does not exist (sites: {have})", site=site)
    return found


# -- hybrid gateways ---------------------------------------------------------------------


@router.post("/hybrid-gws", status_code=201, responses=errors(404, 409, 422))
def create_gw(body: HybridGwCreate, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    """A hybrid gateway of `vpc` to the IDC site whose router is `idc_peer`; the controller
    runs `replicas` of it on distinct hosts. One per VPC and site."""
    st = state_of(request)
    name = validate_name("hybrid_gw", body.name)
    validate_asn(body.asn, "asn")
    validate_asn(body.peer_asn, "peer_asn")
    if body.md5_secret is not None:
        check_secret(body.md5_secret)  # what FRR takes as one word: refused here, not on hosts
    with st.store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        vpc = resolve(tx, "vpc", c.project.id, body.vpc)
        sites = tx.list("idc_site", st.admin_project_id)
        site = next((s for s in sites if s.spec["router_ip"] == body.idc_peer), None)
        if site is None:
            have = ", ".join(f"{s.name} ({s.spec['router_ip']})" for s in sites) or "none"
            raise NotFound(
                f"no IDC site has its router at {body.idc_peer}: sites and routers: {have}",
                idc_peer=body.idc_peer,
            )
        for g in tx.find("hybrid_gw", "vpc", vpc.id):
            if g.spec["site"] == site.id:
                raise Conflict(
                    f"VPC {vpc.name} already has hybrid gateway {g.name} to site {site.name}; "
                    f"scale it instead (`yunhan hybrid-gw scale {g.name} --replicas N`)",
                    hybrid_gw=g.name,
                )
        index, vpc = take_index(tx, vpc)
        gw = tx.create(
            "hybrid_gw",
            new_id("hybrid_gw"),
            c.project.id,
            name,
            {
                "vpc": vpc.id,
                "site": site.id,
                "peer_ip": site.spec["router_ip"],
                "peer_asn": body.peer_asn,
                "asn": body.asn,
                "replicas": body.replicas,
                "bfd": body.bfd,
                "md5_secret": body.md5_secret,
            },
            {
                "index": index,
                "site_name": site.name,
                "line": {
                    "cidr": site.spec["line_cidr"],
                    "vni": site.spec["line_vni"],
                    "vtep": site.spec["line_vtep"],
                    "router_ip": site.spec["router_ip"],
                },
                "phase": "pending",
                "replicas": [],
                "history": [],
            },
            labels=body.labels,
        )
        return idem.keep(tx, c, 201, _gw_view(gw))


@router.get("/hybrid-gws", responses=errors(404, 422))
def list_gws(
    request: Request,
    c: CallerDep,
    page: PageDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
    name: NameFilter = None,
) -> Any:
    with state_of(request).store.read() as r:
        if vpc is not None:
            gws = r.find("hybrid_gw", "vpc", resolve(r, "vpc", c.project.id, vpc).id)
        else:
            gws = r.list("hybrid_gw", c.project.id)
        return paginate(gws, page, r.revision, _gw_view, lambda o: name is None or o.name == name)


@router.get("/hybrid-gws/{ref}", responses=errors(404))
def get_gw(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return _gw_view(resolve(r, "hybrid_gw", c.project.id, ref))


@router.post("/hybrid-gws/{ref}/scale", responses=errors(404, 412, 422))
def scale_gw(
    ref: str, body: HybridGwScale, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """Set how many replicas run. New ones join beside the others; removing one drops only
    the flows through it (the highest-numbered go first)."""
    with state_of(request).store.transaction() as tx:
        gw = resolve(tx, "hybrid_gw", c.project.id, ref)
        check_if_match(gw, if_match)
        return _gw_view(tx.update(gw, spec={**gw.spec, "replicas": body.replicas}))


@router.delete("/hybrid-gws/{ref}", responses=errors(404, 412))
def delete_gw(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Delete a gateway: its replicas stop, and the IDC subnets it carried become
    unreachable from the VPC (until another gateway to the site exists)."""
    with state_of(request).store.transaction() as tx:
        gw = resolve(tx, "hybrid_gw", c.project.id, ref)
        check_if_match(gw, if_match)
        return _gw_view(tx.delete(gw))


def idc_subnets(r: Reader, vpc_id: str) -> list[Resource]:
    return [s for s in r.find("subnet", "vpc", vpc_id) if s.spec.get("location")]


@router.get("/hybrid-gws/{ref}/routes", responses=errors(404))
def gw_routes(ref: str, request: Request, c: CallerDep) -> Any:
    """Every route of the gateway with its origin: `declared` (an IDC subnet of the VPC
    served in the IDC: what the VPC's hosts send to the replicas), `learned` (from the IDC
    router by BGP, per replica, with next hop and AS path; `installed` when it is inside
    the VPC's address plan), and `announced` (what the replicas tell the IDC)."""
    with state_of(request).store.read() as r:
        gw = resolve(r, "hybrid_gw", c.project.id, ref)
        vpc = r.get("vpc", gw.spec["vpc"])
        subs = idc_subnets(r, gw.spec["vpc"])
        site_name = gw.status.get("site_name")
        pairs = [
            (s.spec["cidr"], s.spec.get("serve", IDC))
            for s in subs
            if s.spec["location"] == f"{IDC}:{site_name}"
        ]
        blocks = vpc.spec["cidrs"] if vpc else []
        mine = [cidr for cidr, _serve in pairs]
        out: list[dict[str, Any]] = [
            {
                "prefix": p,
                "origin": "declared",
                "replica": None,
                "nexthop": "replicas (ECMP)",
                "as_path": "",
                "installed": True,
            }
            for p in served_in_idc(pairs)
        ]
        for rep in gw.status.get("replicas") or []:
            for lr in rep.get("learned") or []:
                prefix = str(lr.get("prefix"))
                inside = any(
                    ipaddress.IPv4Network(prefix).subnet_of(ipaddress.IPv4Network(m)) for m in mine
                )
                out.append(
                    {
                        "prefix": prefix,
                        "origin": "learned",
                        "replica": rep["index"],
                        "nexthop": lr.get("nexthop"),
                        "as_path": lr.get("as_path", ""),
                        "installed": inside,
                    }
                )
        for p in announced(blocks, pairs):
            out.append(
                {
                    "prefix": p,
                    "origin": "announced",
                    "replica": None,
                    "nexthop": "self",
                    "as_path": str(gw.spec["asn"]),
                    "installed": True,
                }
            )
        return {"items": out, "revision": r.revision}


# -- the route switch --------------------------------------------------------------------


def _switch_subnet(tx: Reader, project: str, prefix: str) -> Resource:
    try:
        net = str(ipaddress.IPv4Network(prefix, strict=True))
    except ValueError as exc:
        raise ValidationError(f"prefix {prefix!r}: {exc}", field="prefix") from exc
    for s in tx.list("subnet", project):
        if s.spec["cidr"] == net and s.spec.get("location"):
            return s
    raise NotFound(
        f"no subnet located in an IDC has the prefix {net}: create it with "
        "`yunhan subnet create NAME --vpc V --cidr PREFIX --location idc:SITE`",
        prefix=net,
    )


@router.post("/hybrid/switch", responses=errors(404, 409, 422))
def switch(body: HybridSwitch, request: Request, c: CallerDep) -> Any:
    """Serve an IDC subnet's prefix in the cloud or back in the IDC. One write; the answer
    carries its revision (wait for `GET /v1/converged?revision=`) and exactly what changes:
    hosts that re-point, replicas whose announcements change, instances that take the
    addresses over (or give them back). `dry_run` writes nothing."""
    st = state_of(request)
    with st.store.transaction() as tx:
        sub = _switch_subnet(tx, c.project.id, body.prefix)
        before = sub.spec.get("serve", IDC)
        vpc = tx.get("vpc", sub.spec["vpc"])
        assert vpc is not None
        site_name = sub.spec["location"].split(":", 1)[1]
        gws = [
            g for g in tx.find("hybrid_gw", "vpc", vpc.id) if g.status.get("site_name") == site_name
        ]
        pairs_before = [(s.spec["cidr"], s.spec.get("serve", IDC)) for s in idc_subnets(tx, vpc.id)]
        pairs_after = [
            (cidr, body.to if cidr == sub.spec["cidr"] else serve) for cidr, serve in pairs_before
        ]
        ann_before, ann_after = (
            set(announced(vpc.spec["cidrs"], pairs_before)),
            set(announced(vpc.spec["cidrs"], pairs_after)),
        )
        insts = sorted(i.name for i in tx.find("instance", "subnet", sub.id))
        hosts = sorted(
            {
                str(i.status["host"])
                for s in tx.find("subnet", "vpc", vpc.id)
                for i in tx.find("instance", "subnet", s.id)
                if i.status.get("host")
            }
            | {
                str(rep["host"])
                for g in gws
                for rep in g.status.get("replicas") or []
                if rep.get("host")
            }
        )
        changes = {
            "subnet": sub.name,
            "prefix": sub.spec["cidr"],
            "from": before,
            "to": body.to,
            "hosts": sorted(hosts) if before != body.to else [],
            "replicas": [
                {"gateway": g.name, "index": rep["index"], "host": rep.get("host")}
                for g in gws
                for rep in g.status.get("replicas") or []
            ]
            if before != body.to
            else [],
            "announce_add": sorted(ann_after - ann_before, key=_net_key),
            "announce_withdraw": sorted(ann_before - ann_after, key=_net_key),
            "instances": insts if before != body.to else [],
        }
        # Refused before the dry run answers: a dry run says what the switch would do.
        if body.to == CLOUD and before != body.to and not gws:
            raise Conflict(
                f"VPC {vpc.name} has no hybrid gateway to site {site_name}: the IDC would not "
                "learn that the prefix moved; create one first",
                site=site_name,
            )
        if body.dry_run or before == body.to:
            return {"applied": False, "revision": tx.revision, "changes": changes}
        tx.update(sub, spec={**sub.spec, "serve": body.to})
    return {"applied": True, "revision": _revision_after(request), "changes": changes}


def _net_key(cidr: str) -> tuple[int, int]:
    n = ipaddress.IPv4Network(cidr)
    return (int(n.network_address), n.prefixlen)


def _revision_after(request: Request) -> int:
    with state_of(request).store.read() as r:
        return r.revision


# -- agents' reports ---------------------------------------------------------------------

REPORTED = ("state", "reason", "since", "bfd", "learned", "announced")


@router.post("/agent/hosts/{name}/hybrid", responses=errors(403, 404))
def report_replicas(name: str, body: ReplicaReports, request: Request, _: AgentDep) -> Any:
    """The BGP sessions of the replicas this host runs, as its agent saw them; written only
    where they changed (hosts follow `state`: only Established replicas get traffic)."""
    st = state_of(request)
    changed = 0
    with st.store.transaction() as tx:
        for rep in body.replicas:
            gw = tx.get("hybrid_gw", rep.gateway)
            if gw is None:
                continue
            reps = [dict(x) for x in gw.status.get("replicas") or []]
            for x in reps:
                if x.get("index") == rep.index and x.get("host") == name:
                    new = {k: getattr(rep, k) for k in REPORTED}
                    if any(x.get(k) != v for k, v in new.items()):
                        x.update(new)
                        changed += 1
                        tx.update(gw, status={**gw.status, "replicas": reps})
    return {"changed": changed}
