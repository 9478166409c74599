"""What every action uses: its context (parameters, the in-process API), errors, lists."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from yunhan.api.ucloud import wire

Call = Callable[..., Awaitable[Any]]  # (method, path, json=None, params=None) -> body


class ActionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Ctx:
    params: Mapping[str, str]
    call: Call

    def need(self, name: str) -> str:
        v = self.params.get(name)
        if v is None or v == "":
            raise ActionError(wire.MISSING_PARAM, f"Params [{name}] not available")
        return v

    def need_list(self, name: str) -> list[str]:
        v = wire.listed(self.params, name)
        if not v:
            raise ActionError(wire.MISSING_PARAM, f"Params [{name}.0] not available")
        return v

    def int(self, name: str, default: int) -> int:
        v = self.params.get(name)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise ActionError(wire.INVALID_PARAM, f"Params [{name}] is not an integer") from None


def epoch(iso: str | None) -> int:
    if not iso:
        return 0
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


async def all_items(ctx: Ctx, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
        page = await ctx.call("GET", path, params=q)
        items.extend(page.get("items") or [])
        cursor = page.get("next")
        if not cursor:
            return items


def paginate(ctx: Ctx, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    offset = max(0, ctx.int("Offset", 0))
    limit = ctx.int("Limit", 20)
    return rows[offset : offset + limit] if limit > 0 else rows[offset:]


Handler = Callable[[Ctx], Awaitable[dict[str, Any]]]
