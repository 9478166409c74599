"""`yunhan ai …` against the real API app and router, on an in-memory function host
(fn_fixtures; the services' handlers replaced): list, enable, call with --file, --text or
--data, disable; refusals made before any request is sent."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_fixtures import AppTransport, CountingTransport, Region, region
from fn_fixtures import FakeFunctionHost, functions_on

from yunhan.ai import catalog

__all__ = ["region"]  # the fixture, re-exported for pytest

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(32))


def _service(event: Any, ctx: Any) -> Any:
    if event.get("text") == "fail":
        raise ValueError("sentiment: no text to rate")
    return {"service": ctx.function_name, "got": sorted(event)}


@pytest.fixture
def host(region: Region) -> Iterator[FakeFunctionHost]:
    h = FakeFunctionHost("az1-h1")
    for name in catalog.SERVICES:
        h.handlers[f"ai-{name}"] = _service
    fns = functions_on(region.http.app.state.yunhan, [h])  # type: ignore[attr-defined]
    assert isinstance(region.transport, AppTransport)
    region.transport = CountingTransport(region.transport)
    yield h
    fns.stop()


def _sent(r: Region) -> list[tuple[str, str]]:
    assert isinstance(r.transport, CountingTransport)
    return r.transport.sent


def test_list_enable_call_disable(region: Region, host: FakeFunctionHost, tmp_path: Path) -> None:
    r = region
    lines = r.ok("ai", "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "INPUT", "ENABLED", "MEMORY_MB", "TIMEOUT_S"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [name, catalog.SERVICES[name].field, "no"] for name in sorted(catalog.SERVICES)
    ]
    out = r.ok("ai", "enable", "sentiment").stdout
    assert out == "AI service sentiment enabled: function ai-sentiment version 1\n"
    assert "version 1" in r.ok("ai", "enable", "sentiment").stdout  # again: the same one
    r.ok("ai", "enable", "ocr")
    listed = {s["name"]: s for s in r.cli("ai", "list", "--json").json()}
    assert listed["sentiment"]["enabled"] and listed["ocr"]["enabled"]
    assert not listed["speech"]["enabled"]
    # --text
    run = r.ok("ai", "call", "sentiment", "--text", "I love it")
    assert json.loads(run.stdout) == {"service": "ai-sentiment", "got": ["text"]}
    assert run.stderr.startswith("request ") and "billed" in run.stderr
    # --file: an image, base64 in "image"
    (tmp_path / "scan.png").write_bytes(PNG)
    run = r.ok("ai", "call", "ocr", "--file", str(tmp_path / "scan.png"))
    assert json.loads(run.stdout)["service"] == "ai-ocr"
    # --data: JSON or @file; --json: the envelope
    (tmp_path / "ev.json").write_text('{"text": "from a file", "top": 3}')
    r.ok("ai", "call", "sentiment", "--data", f"@{tmp_path / 'ev.json'}")
    ans = r.cli("ai", "call", "sentiment", "--data", '{"text": "json"}', "--json").json()
    assert ans["ok"] and ans["result"]["service"] == "ai-sentiment" and ans["memory_mb"] == 128
    assert host.events == [
        ("ai-sentiment", 1, {"text": "I love it"}),
        ("ai-ocr", 1, {"image": base64.b64encode(PNG).decode()}),
        ("ai-sentiment", 1, {"text": "from a file", "top": 3}),
        ("ai-sentiment", 1, {"text": "json"}),
    ]
    # A failing call: exit 1, the error on stderr.
    run = r.cli("ai", "call", "sentiment", "--text", "fail")
    assert run.code == 1 and run.stdout == ""
    assert "error: ValueError: sentiment: no text to rate" in run.stderr
    out = r.ok("ai", "disable", "sentiment").stdout
    assert out == "AI service sentiment disabled (function ai-sentiment deleted)\n"
    run = r.cli("ai", "call", "sentiment", "--text", "x")
    assert run.code == 1 and "`yunhan ai enable sentiment`" in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("enable", "nope"), "unknown AI service 'nope': the services are faces, langid"),
        (("disable", "nope"), "unknown AI service 'nope'"),
        (("call", "nope", "--text", "x"), "unknown AI service 'nope'"),
        (("call", "sentiment"), "give one of --file, --text and --data"),
        (("call", "sentiment", "--text", "a", "--data", "{}"), "give one of --file, --text"),
        (("call", "ocr", "--file", "NOTES"), "is not an image: send PNG, JPEG"),
        (("call", "speech", "--file", "NOTES"), "is not a WAV file"),
        (("call", "ocr", "--file", "MISSING"), "No such file"),
        (("call", "ocr", "--text", "hi"), "ocr takes a file (image), not --text"),
        (("call", "sentiment", "--data", "{bad"), "--data is not JSON"),
    ],
)
def test_refused_before_any_request(
    region: Region, host: FakeFunctionHost, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "notes.txt").write_text("just text, no image")
    files = {"NOTES": str(tmp_path / "notes.txt"), "MISSING": str(tmp_path / "missing.png")}
    run = region.cli("ai", *(files.get(a, a) for a in args))
    assert run.code == 1 and message in run.stderr, run.stderr
    assert len(run.stderr.splitlines()) == 1
    assert _sent(region) == [] and host.events == []
