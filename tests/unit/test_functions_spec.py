"""Pure rules of a function: cpu shares, billed rounding, uid choice, validation."""

from __future__ import annotations

import pytest

from yunhan.errors import ValidationError
from yunhan.functions.spec import (
    FunctionSpec,
    UidRange,
    billed_ms,
    choose_uid,
    cpu_shares,
    validate,
)


@pytest.mark.parametrize(
    ("mb", "shares"), [(1769, 1024), (3538, 2048), (128, 74), (64, 37), (1, 2), (3, 2)]
)
def test_cpu_shares_follow_memory_as_lambda_does(mb: int, shares: int) -> None:
    assert cpu_shares(mb) == shares


@pytest.mark.parametrize(
    ("ns", "ms"),
    [(1, 1), (999_999, 1), (1_000_000, 1), (1_000_001, 2), (12_300_000, 13), (0, 1)],
)
def test_billed_duration_rounds_up_to_a_whole_millisecond(ns: int, ms: int) -> None:
    assert billed_ms(ns) == ms


def test_a_function_keeps_its_uid_and_two_never_share_one() -> None:
    uids = UidRange(base=70000, size=4)
    a = choose_uid("alpha", {}, (), uids)
    assert 70000 <= a < 70004
    assert choose_uid("alpha", {}, (), uids) == a  # deterministic
    assert choose_uid("alpha", {a: "alpha"}, (), uids) == a  # its own, again
    taken = {a: "alpha"}
    b = choose_uid("beta", {a: "someone-else"}, (), uids)
    assert b != a or choose_uid("beta", {}, (), uids) != a
    for name in ("b", "c", "d"):
        uid = choose_uid(name, taken, (), uids)
        assert uid not in taken
        taken[uid] = name
    assert sorted(taken) == [70000, 70001, 70002, 70003]
    with pytest.raises(ValidationError, match="no uid left"):
        choose_uid("e", taken, (), uids)


def test_uid_choice_skips_the_hosts_own_users() -> None:
    uids = UidRange(base=70000, size=3)
    first = choose_uid("x", {}, (), uids)
    assert choose_uid("x", {}, {first}, uids) != first


def _spec(**kw: object) -> FunctionSpec:
    base: dict[str, object] = {"name": "hello", "version": 1, "handler": "main.handler"}
    return FunctionSpec(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"name": "Hello"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"version": 0}, "version"),
        ({"handler": "handler"}, "handler"),
        ({"handler": "main."}, "handler"),
        ({"handler": "1main.handler"}, "handler"),
        ({"memory_mb": 63}, "memory"),
        ({"memory_mb": 4097}, "memory"),
        ({"timeout_s": 0}, "timeout"),
        ({"env": {"A-B": "x"}}, "env"),
    ],
)
def test_validation_refuses_a_bad_spec_and_names_the_field(
    kw: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        validate(_spec(**kw), host_memory_mb=4096)
    assert exc.value.details["field"] == field


def test_a_good_spec_passes_and_splits_its_handler() -> None:
    spec = _spec(handler="pkg.mod.run", memory_mb=64, env={"K": "v"})
    validate(spec, host_memory_mb=4096)
    assert (spec.module, spec.func, spec.key) == ("pkg.mod", "run", "hello:v1")
