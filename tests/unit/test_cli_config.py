"""Where the CLI finds endpoint and token, and how API errors become messages (no root)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from yunhan.cli import config
from yunhan.cli.client import Reply, error_from_reply
from yunhan.cli.resources import exec_argv
from yunhan.errors import Conflict, NotFound, Unauthorized, ValidationError, YunhanError


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(config.ENDPOINT_ENV, raising=False)
    monkeypatch.delenv(config.TOKEN_ENV, raising=False)
    return tmp_path


def test_config_file_is_private_and_round_trips(home: Path) -> None:
    path = config.save_file("http://127.0.0.1:4000", "secret")
    assert path == home / ".config" / "yunhan" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"endpoint": "http://127.0.0.1:4000", "token": "secret"}
    assert config.resolve() == config.Credentials("http://127.0.0.1:4000", "secret")


def test_flags_beat_environment_beat_file(monkeypatch: pytest.MonkeyPatch) -> None:
    config.save_file("http://file", "file-token")
    monkeypatch.setenv(config.ENDPOINT_ENV, "http://env/")
    assert config.resolve() == config.Credentials("http://env", "file-token")
    monkeypatch.setenv(config.TOKEN_ENV, "env-token")
    assert config.resolve().token == "env-token"
    assert config.resolve("http://flag", "flag-token") == config.Credentials(
        "http://flag", "flag-token"
    )


def test_missing_pieces_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="run `yunhan up`"):
        config.resolve()
    monkeypatch.setenv(config.ENDPOINT_ENV, "http://env")
    with pytest.raises(Unauthorized, match="YUNHAN_TOKEN"):
        config.resolve()


def test_broken_config_file_is_named(home: Path) -> None:
    path = home / ".config" / "yunhan" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValidationError, match=str(path)):
        config.resolve()


def test_forget_only_the_region_that_went_down() -> None:
    config.save_file("http://127.0.0.1:4000", "t")
    assert not config.forget_endpoint("http://127.0.0.1:5000")
    assert config.load_file()["endpoint"] == "http://127.0.0.1:4000"
    assert config.forget_endpoint("http://127.0.0.1:4000")
    assert config.load_file() == {}


def _response(status: int, body: object) -> YunhanError:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return error_from_reply("GET", "/v1/vpcs/a", Reply(status, raw, reason="Bad Gateway"))


def test_error_shape_maps_to_our_exceptions() -> None:
    err = _response(404, {"error": {"code": "not_found", "message": "no vpc 'a'", "details": {}}})
    assert isinstance(err, NotFound) and err.message == "no vpc 'a'"
    err = _response(409, {"error": {"code": "conflict", "message": "in use", "details": {"x": 1}}})
    assert isinstance(err, Conflict) and err.details == {"x": 1}
    err = _response(502, "Bad Gateway")
    assert type(err) is YunhanError and "HTTP 502 Bad Gateway" in err.message
    assert "GET /v1/vpcs/a" in err.message


def test_exec_argv_enters_the_instance_namespaces(tmp_path: Path) -> None:
    netns, uts = tmp_path / "netns", tmp_path / "uts"
    netns.touch()
    uts.touch()
    inst = {"name": "a", "status": {"phase": "running", "netns": str(netns), "uts": str(uts)}}
    assert exec_argv(inst, ["ping", "-c1", "10.0.1.3"]) == [
        "nsenter", f"--net={netns}", f"--uts={uts}", "--", "ping", "-c1", "10.0.1.3",
    ]  # fmt: skip
    with pytest.raises(ValidationError, match="no command"):
        exec_argv(inst, [])
    named = {"name": "a", "status": {"phase": "running", "netns": "no-such-ns", "uts": None}}
    with pytest.raises(ValidationError, match="/run/netns/no-such-ns is missing"):
        exec_argv(named, ["true"])


def test_a_broken_config_file_does_not_block_flags_or_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = home / ".config" / "yunhan" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    got = config.resolve("http://flag:1", "flag-token")
    assert got == config.Credentials("http://flag:1", "flag-token")
    monkeypatch.setenv(config.ENDPOINT_ENV, "http://env:2")
    monkeypatch.setenv(config.TOKEN_ENV, "env-token")
    assert config.resolve() == config.Credentials("http://env:2", "env-token")
    monkeypatch.delenv(config.TOKEN_ENV)
    with pytest.raises(ValidationError, match="not valid JSON"):
        config.resolve("http://flag:1")  # the token has to come from the file
