"""Where the CLI finds its endpoint and token, kubeconfig style.

Precedence, highest first: `--endpoint/--token`, $YUNHAN_ENDPOINT / $YUNHAN_TOKEN, then
~/.config/yunhan/config.json ({"endpoint", "token"}, mode 0600), which `yunhan up` writes
with the admin token and `yunhan down` removes when it points at the region it removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from yunhan.errors import Unauthorized, ValidationError

ENDPOINT_ENV = "YUNHAN_ENDPOINT"
TOKEN_ENV = "YUNHAN_TOKEN"


def config_path() -> Path:
    """~/.config/yunhan/config.json of the user running the CLI ($HOME decides)."""
    return Path.home() / ".config" / "yunhan" / "config.json"


class Credentials(NamedTuple):
    endpoint: str
    token: str


def load_file(path: Path | None = None) -> dict[str, str]:
    """The config file's content; {} when there is none."""
    path = path or config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, dict):
        raise ValidationError(f"{path} must hold a JSON object with endpoint and token")
    return {k: str(v) for k, v in data.items() if k in ("endpoint", "token") and v}


def save_file(endpoint: str, token: str, path: Path | None = None) -> Path:
    """Write the config file readable by its owner only (it holds a bearer token)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"endpoint": endpoint, "token": token}, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)  # in case the file existed with wider permissions
    tmp.replace(path)
    return path


def forget_endpoint(endpoint: str, path: Path | None = None) -> bool:
    """Remove the config file if it points at `endpoint` (a region that is gone)."""
    path = path or config_path()
    try:
        if load_file(path).get("endpoint") == endpoint:
            path.unlink()
            return True
    except (FileNotFoundError, ValidationError):
        pass
    return False


def resolve(endpoint: str | None = None, token: str | None = None) -> Credentials:
    """Endpoint and token from flags, environment, then the config file."""
    ep = endpoint or os.environ.get(ENDPOINT_ENV)
    tok = token or os.environ.get(TOKEN_ENV)
    if not (ep and tok):  # the file only when it is needed: a broken one must not block flags
        file = load_file()
        ep = ep or file.get("endpoint")
        tok = tok or file.get("token")
    if not ep:
        raise ValidationError(
            "no Yunhan endpoint configured: run `yunhan up`, or set "
            f"${ENDPOINT_ENV} (or --endpoint) and ${TOKEN_ENV} (or --token)"
        )
    if not tok:
        raise Unauthorized(
            f"no token for {ep}: set ${TOKEN_ENV} or --token (ask an admin for "
            "`yunhan project create NAME`)"
        )
    return Credentials(ep.rstrip("/"), tok)
