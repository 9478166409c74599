"""`yunhan netconf push|rollback|show|log`: a lab IDC site's switch, configured safely.

A push is a NETCONF confirmed commit (yunhan.lab.netconfsw): the new configuration runs at
once, and the switch itself puts the previous one back when the confirm timeout expires.
In between, Yunhan checks the connectivity that belongs to the change (the matrix of
every pair with an endpoint in the site: its servers, the replicas on its line), and
confirms only if every pair that was reached before the push still is. Otherwise it sends
nothing more: the switch rolls back by itself, the matrix is run again to show it green,
and the command exits 1. Every push and rollback is journaled with its diff.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.errors import NotFound, ValidationError, YunhanError

if TYPE_CHECKING:
    from yunhan.lab.idc import SiteSpec
    from yunhan.lab.netconfsw import SwitchPaths
    from yunhan.net.connectivity import Matrix, Pair
    from yunhan.net.switchcfg import SwitchConfig

DEFAULT_CONFIRM_TIMEOUT = 30.0
ROLLBACK_GRACE = 10.0  # seconds past the confirm timeout to wait for the switch's rollback


class PushRolledBack(YunhanError):
    code = "rolled_back"


def _site(ctx: Ctx, what: str) -> tuple[Any, Any, SiteSpec, SwitchPaths]:
    from yunhan.cli.trace import lab_record
    from yunhan.lab import idc, netconfsw

    c = ctx.client()
    record = lab_record(c.endpoint, ctx["state_dir"], what)
    sites = idc.load_sites(record)
    if ctx["site"] not in sites:
        have = ", ".join(sorted(sites)) or "none"
        raise NotFound(f"no IDC site {ctx['site']} in the lab region (sites: {have})")
    site = sites[ctx["site"]].spec
    return c, record, site, netconfsw.paths(site, record.data_dir)


def _read_config(path: str) -> SwitchConfig:
    import yaml

    from yunhan.net import switchcfg

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path} is not YAML or JSON: {exc}") from exc
    try:
        return switchcfg.parse(data)
    except switchcfg.SwitchConfigError as exc:
        raise ValidationError(f"{path}: {exc}") from exc


# -- the journal -------------------------------------------------------------------------------


def journal(p: SwitchPaths) -> list[dict[str, Any]]:
    """The site's pushes and rollbacks, oldest first (n from 1; 0 is the empty
    configuration the switch started with)."""
    try:
        lines = p.journal.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _journal_add(p: SwitchPaths, entry: dict[str, Any]) -> dict[str, Any]:
    entries = journal(p)
    entry = {"n": len(entries) + 1, "at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
    p.journal.parent.mkdir(parents=True, exist_ok=True)
    with open(p.journal, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


# -- checks ------------------------------------------------------------------------------------


def site_pairs(c: Any, record: Any, site: str, pairs_file: str | None) -> list[Pair]:
    """The pairs whose connectivity belongs to a change of `site`: every pair (of the
    VPCs joined to it) with an endpoint in the site (its servers, the replicas on its
    line); or those of `pairs_file`."""
    from yunhan.cli.check import endpoints
    from yunhan.net.connectivity import PairsError, default_pairs, read_pairs

    eps = endpoints(c, record)
    if pairs_file:
        try:
            return read_pairs(Path(pairs_file).read_text(), eps)
        except OSError as exc:
            raise ValidationError(f"cannot read {pairs_file}: {exc.strerror}") from exc
        except PairsError as exc:
            raise ValidationError(f"{pairs_file}: {exc}") from exc
    vpcs = {e.vpc for e in eps if e.site == site}
    return [
        p
        for p in default_pairs([e for e in eps if e.vpc in vpcs])
        if p.src.site == site or p.dst.site == site
    ]


def regressions(before: Matrix, after: Matrix) -> list[str]:
    """Pairs reached before and not after (by addresses: an endpoint that moved, a
    switched prefix, is the same pair), described."""
    was = {(r.pair.src.ip, r.pair.dst.ip) for r in before.results if r.reached}
    return [
        f"{r.pair.src.name} -> {r.pair.dst.name} ({r.pair.dst.ip})"
        + (f": {r.error}" if r.error else "")
        for r in after.results
        if not r.reached and (r.pair.src.ip, r.pair.dst.ip) in was
    ]


# -- push --------------------------------------------------------------------------------------


def apply_config(
    ctx: Ctx, new: SwitchConfig, action: dict[str, Any], *, what: str
) -> dict[str, Any]:
    """Push `new` with a confirmed commit, check, confirm or let the switch roll back;
    journal and print the outcome. Returns the journal entry."""
    from yunhan.cli.check import run_matrix
    from yunhan.lab import netconfsw, switchd
    from yunhan.net import switchcfg

    c, record, site, p = _site(ctx, what)
    timeout = float(ctx["confirm_timeout"])
    if not 1 <= timeout <= 3600:
        raise ValidationError("--confirm-timeout is from 1 to 3600 seconds")
    pairs = site_pairs(c, record, site.name, ctx["pairs"])
    persist = secrets.token_hex(8)
    m = netconfsw.connect(site, p)
    try:
        old = switchd.running_config(m)
        changes = switchcfg.diff(old, new)
        if not changes:
            echo(f"IDC site {site.name}: the switch already runs this configuration")
            return {}
        for line in changes:
            echo(line)
        before = run_matrix(c, record, pairs, live=0) if pairs else None
        if before is not None:
            echo(
                f"checks: {len(pairs)} pairs, {sum(r.reached for r in before.results)} "
                f"reached before the push"
            )
        m.lock("candidate")
        try:
            m.discard_changes()
            # No <validate> first: commit validates anyway, and netconfd 2.13 commits an
            # empty container after a validate of a candidate edited with operation
            # "replace" (measured: the switch lost every route).
            m.edit_config(target="candidate", config=switchcfg.to_xml(new))
            t0 = time.monotonic()
            # A persist id: the confirmation names this commit, so a confirmation that
            # comes too late fails instead of committing the candidate again unchecked.
            m.commit(confirmed=True, timeout=str(int(timeout)), persist=persist)
        finally:
            m.unlock("candidate")
        applied = netconfsw.wait_applied(p, new.digest(), timeout / 2)
        applied_s = None if applied is None else time.monotonic() - t0  # from the commit
        # The gate explains by the model only: a live trace per lost pair would spend the
        # confirm timeout (the e2e test's 8 lost pairs took longer than its 8 s).
        after = run_matrix(c, record, pairs, live=0) if pairs and applied_s is not None else None
        lost = regressions(before, after) if before is not None and after is not None else []
        entry: dict[str, Any] = {
            **action,
            "site": site.name,
            "config": new.to_json(),
            "digest": new.digest(),
            "previous": old.digest(),
            "previous_config": old.to_json(),
            "diff": changes,
            "confirm_timeout": timeout,
            "applied_s": None if applied_s is None else round(applied_s, 3),
            "checks": {"pairs": len(pairs), "lost": lost},
        }
        late = time.monotonic() - t0 > timeout - 1
        if applied_s is not None and not lost and not late:
            m.commit(persist_id=persist)  # the confirming commit
            entry["outcome"] = "confirmed"
            entry["confirmed_s"] = round(time.monotonic() - t0, 3)
            entry = _journal_add(p, entry)
            checked = f"{len(pairs)} pairs still reached" if pairs else "no pairs to check"
            echo(
                f"confirmed #{entry['n']}: applied in {entry['applied_s']:.2f} s, "
                f"{checked}, confirmed {entry['confirmed_s']:.2f} s after the commit"
            )
            return entry
        if applied_s is None:
            echo(f"the switch did not apply the change within {timeout / 2:g} s")
        elif late and not lost:
            echo(f"the checks took longer than the confirm timeout ({timeout:g} s)")
        for line in lost:
            echo(f"LOST {line}")
        if after is not None:
            for r in after.failures:
                if r.why is not None and (r.why.rule or r.why.where):
                    where = r.why.where or "?"
                    echo(
                        f"  {r.pair.src.name} -> {r.pair.dst.name}: dropped at {where} {r.why.rule}"
                    )
        echo(f"not confirmed: the switch rolls back by itself within {timeout:g} s")
        # Nothing more is sent: netconfd runs its confirm timer only while idle. The old
        # configuration counts as back only once the timeout has passed (a change the
        # driver never applied leaves the old digest in place all along).
        time.sleep(max(0.0, t0 + timeout - time.monotonic()))
        back = netconfsw.wait_applied(p, old.digest(), ROLLBACK_GRACE)
    finally:
        with contextlib.suppress(Exception):  # the session may be gone with the switch
            m.close_session()
    entry["outcome"] = "rolled-back" if back is not None else "rollback-unseen"
    entry["rollback_s"] = None if back is None else round(time.monotonic() - t0, 3)
    green = None
    if back is not None and before is not None:
        again = run_matrix(c, record, pairs, live=0)
        green = not regressions(before, again)
        entry["checks"]["after_rollback_lost"] = regressions(before, again)
    entry = _journal_add(p, entry)
    if back is None:
        raise PushRolledBack(
            f"#{entry['n']} not confirmed, and the switch did not report its rollback within "
            f"{timeout + ROLLBACK_GRACE:g} s: see `yunhan netconf show {site.name}`"
        )
    state = (
        ""
        if green is None
        else (" and the matrix is green again" if green else " but pairs are still lost")
    )
    raise PushRolledBack(
        f"#{entry['n']} rolled back by the switch {entry['rollback_s']:.2f} s after the commit"
        f"{state}"
    )


def push(ctx: Ctx) -> None:
    new = _read_config(ctx["config"])
    apply_config(ctx, new, {"action": "push", "file": str(ctx["config"])}, what="netconf push")


def rollback_target(entries: list[dict[str, Any]], to: int | None) -> tuple[str, dict[str, Any]]:
    """What a rollback restores, and how to name it: entry `to`'s configuration (0 is the
    empty one), or by default what ran before the last confirmed change (its journaled
    `previous_config`). NotFound for an entry the journal does not have, or nothing to
    undo."""
    if to is None:
        confirmed = [e for e in entries if e.get("outcome") == "confirmed"]
        if not confirmed:
            raise NotFound("nothing to roll back: the journal has no confirmed change")
        last = confirmed[-1]
        return f"before #{last['n']}", dict(last.get("previous_config") or {})
    if to == 0:
        return "#0", {}
    entry = next((e for e in entries if e["n"] == to), None)
    if entry is None:
        raise NotFound(f"no journal entry #{to} (the journal has 1 to {len(entries)}; 0 is empty)")
    return f"#{to}", dict(entry["config"])


def rollback(ctx: Ctx) -> None:
    from yunhan.net import switchcfg

    _, _, site, p = _site(ctx, "netconf rollback")
    to, config = rollback_target(journal(p), ctx["to"])
    echo(f"rolling back IDC site {site.name} to {to}")
    target = switchcfg.parse(config)
    apply_config(ctx, target, {"action": "rollback", "to": to}, what="netconf rollback")


def show(ctx: Ctx) -> None:
    from yunhan.lab import netconfsw, switchd

    _, _, site, p = _site(ctx, "netconf show")
    m = netconfsw.connect(site, p)
    try:
        cfg = switchd.running_config(m)
    finally:
        m.close_session()
    state = netconfsw.applied(p)
    if ctx["as_json"]:
        echo(json.dumps({"running": cfg.to_json(), "digest": cfg.digest(), "applied": state}))
        return
    echo(f"IDC site {site.name}: running {cfg.digest()}")
    for line in cfg.describe() or ["(empty)"]:
        echo(f"  {line}")
    ok = state.get("digest") == cfg.digest() and not state.get("error")
    echo(
        f"applied: {'yes' if ok else 'NO'}" + (f" ({state['error']})" if state.get("error") else "")
    )


def log(ctx: Ctx) -> None:
    _, _, site, p = _site(ctx, "netconf log")
    entries = journal(p)
    if ctx["as_json"]:
        echo(json.dumps(entries))
        return
    if not entries:
        echo(f"IDC site {site.name}: no pushes yet")
    for e in entries:
        what = e["action"] + (f" to {e['to']}" if e.get("action") == "rollback" else "")
        echo(f"#{e['n']} {e['at']} {what}: {e['outcome']}")
        for line in e.get("diff") or []:
            echo(f"    {line}")
        for line in (e.get("checks") or {}).get("lost") or []:
            echo(f"    lost: {line}")


SITE = Arg("site", "the lab IDC site", metavar="SITE")
STATE = Opt(
    ("--state-dir",),
    "state_dir",
    "the lab region's state (env YUNHAN_HOME, default /var/lib/yunhan)",
)
GATED = (
    Opt(
        ("--confirm-timeout",),
        "confirm_timeout",
        "seconds the switch waits for the confirmation before it rolls back",
        float,
        default=DEFAULT_CONFIRM_TIMEOUT,
    ),
    Opt(("--pairs",), "pairs", "the pairs to check (default: every pair touching the site)"),
    STATE,
)
NETCONF = Group(
    "netconf",
    "The NETCONF switch of a lab IDC site: confirmed commits gated by connectivity checks",
    (
        Cmd(
            "push",
            "Push a switch configuration (YAML or JSON: `routes` and `acl`, docs/cutover.md) "
            "as a NETCONF confirmed commit; confirm it only if every pair of the site's "
            "connectivity checks that was reached before is still reached, else let the "
            "switch roll back by itself at the confirm timeout (exit 1). Journaled.",
            push,
            (SITE, Opt(("--config",), "config", "the configuration file", required=True), *GATED),
        ),
        Cmd(
            "rollback",
            "Restore an earlier configuration, pushed and checked like a push: by default "
            "what ran before the last confirmed change; --to N, journal entry N's (0: empty).",
            rollback,
            (SITE, Opt(("--to",), "to", "the journal entry to restore", int), *GATED),
        ),
        Cmd(
            "show",
            "Show the switch's running configuration and whether it is applied.",
            show,
            (SITE, Opt(("--json",), "as_json", "print JSON", bool), STATE),
        ),
        Cmd(
            "log",
            "Show the site's journal: every push and rollback, its diff and its outcome.",
            log,
            (SITE, Opt(("--json",), "as_json", "print JSON", bool), STATE),
        ),
    ),
)
COMMANDS: tuple[Group, ...] = (NETCONF,)
