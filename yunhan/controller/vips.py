"""VIP holders: who holds a floating address, decided by fenced claims (docs/vips.md).

A VIP's `status` says who holds it (`holder`, with `holder_zone`, `holder_host`), under which
`epoch`, and whom the data plane delivers it to (`delivered_to`: the holder, except while a
flap is damped). Everything here is pure: functions take a status and return the new one
(or None: nothing to write), and the callers write it in their store transaction.

* **Epochs fence claims.** Every change of holder bumps `epoch` by one. An agent reports a
  claim with the epoch it had seen (`epoch_seen`); a claim with `epoch_seen` older than the
  stored epoch was made without knowing the latest change, and loses, whatever order the
  reports arrive in. A claim by the holder itself changes nothing (keepalived repeats its
  gratuitous ARPs), so repeated announcements never churn the epoch.
* **Flap damping.** More than `Damping.changes` holder changes within `Damping.window`
  seconds damps the VIP: the claims are still decided and recorded (holder, epoch,
  history: fencing goes on), but `delivered_to` stays where it was when damping began, so
  hosts are not re-pointed back and forth. Once no change has happened for a whole
  window, `settle` delivers it to the latest holder. A move by the API is an operator's
  decision: it re-points at once and ends damping.
* **Host failure changes nothing here.** No function moves a VIP because its holder's host
  stopped heartbeating: a partitioned holder may still be serving, and only a claim by
  another allowed instance (or a move) takes the VIP away from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from yunhan.store import Notice, Reader, Resource, Tx

HISTORY = 20  # failovers kept in status.history
FLAPPING = "VipFlapping"
SETTLED = "VipSettled"
CLAIM_REFUSED = "VipClaimRefused"

Outcome = Literal["won", "held", "stale", "taken", "not_allowed", "not_here", "unknown"]
OUTCOMES: tuple[Outcome, ...] = (
    "won", "held", "stale", "taken", "not_allowed", "not_here", "unknown",
)  # fmt: skip
How = Literal["garp", "traffic"]


@dataclass(frozen=True, slots=True)
class Damping:
    """More than `changes` holder changes within `window` seconds damp a VIP; it settles
    after `window` seconds without a change."""

    changes: int = 3
    window: float = 30.0

    def __post_init__(self) -> None:
        if self.changes < 1 or self.window <= 0:
            raise ValueError("VIP damping needs changes >= 1 and a window > 0 seconds")


@dataclass(frozen=True, slots=True)
class Holder:
    """An instance as a VIP holder: its id, zone id and host name (None: not placed)."""

    instance: str
    zone: str | None
    host: str | None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def initial_status() -> dict[str, Any]:
    """The status of a VIP nobody holds yet."""
    return {
        "holder": None,
        "holder_zone": None,
        "holder_host": None,
        "epoch": 0,
        "delivered_to": None,
        "history": [],
        "recent_changes": [],
        "damped_since": None,
    }


@dataclass(frozen=True, slots=True)
class Change:
    """A new status and whether this change began damping the VIP."""

    status: dict[str, Any]
    damped: bool


def change_holder(
    status: dict[str, Any],
    to: Holder | None,
    now: float,
    cause: str,
    damping: Damping,
    *,
    force: bool = False,
) -> Change:
    """The status after the VIP passes to `to` (None: nobody holds it), epoch bumped.

    `force` (a move by the API, or taking the VIP from an instance that may no longer hold
    it) re-points the data plane at once and ends damping; otherwise a change that makes
    more than `damping.changes` within the window damps the VIP (see the module docstring).
    """
    recent = [t for t in status.get("recent_changes", ()) if now - t < damping.window]
    recent.append(now)
    entry = {
        "at": iso(now),
        "from": status.get("holder"),
        "to": None if to is None else to.instance,
        "cause": cause,
        "epoch": int(status.get("epoch", 0)) + 1,
    }
    new = {
        **status,
        "holder": None if to is None else to.instance,
        "holder_zone": None if to is None else to.zone,
        "holder_host": None if to is None else to.host,
        "epoch": entry["epoch"],
        "history": [*status.get("history", ()), entry][-HISTORY:],
        "recent_changes": recent,
    }
    began = False
    if force:
        new["delivered_to"] = new["holder"]
        new["damped_since"] = None
    elif status.get("damped_since"):
        pass  # damped: recorded, not delivered
    elif len(recent) > damping.changes:
        new["damped_since"] = iso(now)
        began = True
    else:
        new["delivered_to"] = new["holder"]
    return Change(new, began)


def decide_claim(
    status: dict[str, Any],
    allowed: bool,
    on_host: bool,
    epoch_seen: int,
    claimant: Holder,
    now: float,
    damping: Damping,
    how: How = "garp",
) -> tuple[Outcome, Change | None]:
    """The outcome of one claim, and the change it makes (None: nothing to write).

    `allowed`: the claimant is in the VIP's allowed list; `on_host`: it runs on the host
    that reports the claim. Stale claims lose even when the claimant is allowed. A claim
    by `traffic` (the instance sent from the VIP, without announcing it) wins only while
    nobody holds the VIP: an old holder's last packets after a failover must not take
    the address back, so taking over from a holder needs an announcement (or a move).
    """
    if not allowed:
        return "not_allowed", None
    if not on_host:
        return "not_here", None
    if epoch_seen < int(status.get("epoch", 0)):
        return "stale", None
    if status.get("holder") == claimant.instance:
        return "held", None
    if how == "traffic":
        if status.get("holder") is not None:
            return "taken", None
        return "won", change_holder(status, claimant, now, "traffic", damping)
    return "won", change_holder(status, claimant, now, "claim", damping)


def settle(status: dict[str, Any], now: float, damping: Damping) -> dict[str, Any] | None:
    """A damped VIP quiet for a whole window, delivered to its latest holder; None when
    it is not damped or not quiet yet."""
    if not status.get("damped_since"):
        return None
    last = max(status.get("recent_changes") or [0.0])
    if now - last < damping.window:
        return None
    return {
        **status,
        "delivered_to": status.get("holder"),
        "damped_since": None,
        "recent_changes": [],
    }


# -- in the store's transactions -------------------------------------------------------------


def holder_of(inst: Resource) -> Holder:
    return Holder(inst.id, inst.spec.get("zone"), inst.status.get("host"))


@dataclass(frozen=True, slots=True)
class ClaimResult:
    vip_ip: str
    vpc: str
    instance: str
    result: Outcome
    vip: Resource | None  # the VIP as it stands after the claim (None: unknown address)
    began_damping: bool = False

    def view(self) -> dict[str, Any]:
        st = self.vip.status if self.vip is not None else {}
        return {
            "vip_ip": self.vip_ip,
            "vpc": self.vpc,
            "instance": self.instance,
            "result": self.result,
            "vip": None if self.vip is None else self.vip.id,
            "holder": st.get("holder"),
            "epoch": int(st.get("epoch", 0)),
        }


def apply_claim(
    tx: Tx,
    host: str,
    vip_ip: str,
    vpc: str,
    instance: str,
    epoch_seen: int,
    now: float,
    damping: Damping,
    how: How = "garp",
) -> ClaimResult:
    """Decide one claim reported by `host`'s agent and write what it changes."""
    found = tx.find("vip", "vpc_ip", f"{vpc}|{vip_ip}")
    if not found:
        return ClaimResult(vip_ip, vpc, instance, "unknown", None)
    vip = found[0]
    inst = tx.get("instance", instance)
    allowed = inst is not None and inst.id in vip.spec.get("allowed", ())
    on_host = inst is not None and inst.status.get("host") == host
    claimant = holder_of(inst) if inst is not None else Holder(instance, None, None)
    outcome, change = decide_claim(
        vip.status, allowed, on_host, epoch_seen, claimant, now, damping, how
    )
    if change is not None:
        vip = tx.update(vip, status=change.status)
    return ClaimResult(vip_ip, vpc, instance, outcome, vip, change is not None and change.damped)


def release_instance(tx: Tx, inst: Resource, now: float, damping: Damping, cause: str) -> int:
    """Take `inst` off the allowed list of every VIP of its VPC (it is being deleted); a VIP
    it holds is left unheld. The number of VIPs written."""
    n = 0
    for vip in tx.find("vip", "vpc", inst.status.get("vpc") or ""):
        allowed = vip.spec.get("allowed", ())
        if inst.id not in allowed:
            continue
        spec = {**vip.spec, "allowed": [a for a in allowed if a != inst.id]}
        status = vip.status
        if status.get("holder") == inst.id or status.get("delivered_to") == inst.id:
            status = change_holder(status, None, now, cause, damping, force=True).status
        tx.update(vip, spec=spec, status=status)
        n += 1
    return n


def unhold_instance(tx: Tx, inst: Resource, now: float, damping: Damping, cause: str) -> int:
    """A VIP `inst` holds (or is delivered to) is left unheld, for another allowed instance
    to claim; `inst` stays allowed (it was stopped, and may hold it again once started).
    The number of VIPs written."""
    n = 0
    for vip in tx.find("vip", "vpc", inst.status.get("vpc") or ""):
        st = vip.status
        if st.get("holder") == inst.id or st.get("delivered_to") == inst.id:
            st = change_holder(st, None, now, cause, damping, force=True).status
            tx.update(vip, status=st)
            n += 1
    return n


def follow_instance(tx: Tx, inst: Resource) -> int:
    """The VIPs `inst` holds name its new zone and host (it was migrated). The holder is the
    same instance, so the epoch stays: no claim made before the move becomes stale by it, and
    the data plane follows the instance's member entry. The number of VIPs written."""
    n = 0
    for vip in tx.find("vip", "vpc", inst.status.get("vpc") or ""):
        st = vip.status
        if st.get("holder") != inst.id:
            continue
        h = holder_of(inst)
        if (st.get("holder_zone"), st.get("holder_host")) != (h.zone, h.host):
            tx.update(vip, status={**st, "holder_zone": h.zone, "holder_host": h.host})
            n += 1
    return n


def settle_damped(tx: Tx, now: float, damping: Damping) -> list[Notice]:
    """The leader's pass: deliver every damped VIP that has been quiet for a window to its
    latest holder. Notices of the VIPs settled."""
    notices = []
    for vip in tx.find("vip", "damped", "yes"):
        new = settle(vip.status, now, damping)
        if new is None:
            continue
        tx.update(vip, status=new)
        holder = new.get("holder") or "nobody"
        notices.append(
            Notice(
                vip.project,
                vip.id,
                SETTLED,
                f"VIP {vip.name} ({vip.spec['ip']}) stopped flapping: hosts now deliver it "
                f"to its latest holder, {holder}",
                now,
            )
        )
    return notices


def damped_due(r: Reader, now: float, damping: Damping) -> bool:
    """Is some damped VIP ready to settle? (the leader's idle check)"""
    return any(settle(v.status, now, damping) is not None for v in r.find("vip", "damped", "yes"))
