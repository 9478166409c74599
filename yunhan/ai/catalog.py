"""The AI services as plain data, and how an HTTP upload becomes a service's event.

Stdlib only: the API server and the CLI import this, and must not load onnxruntime, OpenCV
or PocketSphinx (the handlers in `services/` do, inside the workers).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from yunhan.errors import ValidationError

SERVICES_DIR = Path(__file__).resolve().parent / "services"
MAX_UPLOAD = 5 << 20  # base64 makes it 6.7 MB, under the runtime's 8 MB frame


@dataclass(frozen=True)
class ServiceDef:
    """One built-in function: deploy `source_dir` with `handler`, `memory_mb` and
    `timeout_s`. `field` is the event's input ("text", "image" or "audio")."""

    name: str
    handler: str
    memory_mb: int
    timeout_s: float
    source_dir: Path
    field: str = "text"


def _def(name: str, memory_mb: int, timeout_s: float, field: str) -> ServiceDef:
    return ServiceDef(name, "main.handler", memory_mb, timeout_s, SERVICES_DIR / name, field)


# Memory and timeouts from measurement (docs/ai.md has the figures): memory is the peak of
# the worker's memory cgroup on a large input with headroom (cpu.shares follow memory, so
# ocr's figure also buys it the CPU inference needs); the timeout covers the slowest
# large input on a busy two-core host, or langid's model load on its first call.
SERVICES: dict[str, ServiceDef] = {
    s.name: s
    for s in (
        _def("ocr", 1024, 60.0, "image"),
        _def("langid", 256, 30.0, "text"),
        _def("sentiment", 128, 5.0, "text"),
        _def("faces", 512, 15.0, "image"),
        _def("speech", 384, 60.0, "audio"),
    )
}


def service(name: str) -> ServiceDef:
    """The service called `name`; ValidationError naming the known ones otherwise."""
    return _lookup(name)


def _lookup(name: str) -> ServiceDef:
    try:
        return SERVICES[name]
    except KeyError:
        raise ValidationError(
            f"unknown AI service {name!r}: the services are {', '.join(sorted(SERVICES))}",
            field="service",
        ) from None


# Formats the workers decode (OpenCV's imdecode; Python's wave for audio), by magic bytes.
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def image_format(data: bytes) -> str | None:
    """The format's name (PNG, JPEG, BMP, TIFF or WebP), or None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _IMAGE_MAGIC if data.startswith(magic)), None)


def is_wav(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def event_from_upload(service: str, content_type: str, body: bytes) -> dict[str, Any]:
    """The event for the service named `service` from a request body.

    * `application/json`: the object itself (it must carry the service's field);
    * `multipart/form-data` with a `file` part: its bytes, base64 in "image" (ocr, faces)
      or "audio" (speech), or decoded as UTF-8 into "text" (langid, sentiment). An image
      must be PNG, JPEG, BMP, TIFF or WebP, audio a WAV file.

    ValidationError with a sentence a person can act on for anything else."""
    svc = _lookup(service)
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        return _json_event(svc, body)
    if media == "multipart/form-data":
        return _file_event(svc, _file_part(content_type, body))
    raise ValidationError(
        f"content type {media or '(none)'!r}: send application/json, or "
        "multipart/form-data with a part named 'file'",
        field="content-type",
    )


def _json_event(svc: ServiceDef, body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"the body is not valid JSON: {exc}", field="body") from exc
    if not isinstance(event, dict) or not isinstance(event.get(svc.field), str):
        raise ValidationError(
            f"{svc.name} takes a JSON object with a string field {svc.field!r}"
            + (" (base64)" if svc.field != "text" else ""),
            field=svc.field,
        )
    return event


def _file_part(content_type: str, body: bytes) -> bytes:
    if len(body) > MAX_UPLOAD + 64 * 1024:
        raise ValidationError(f"upload of {len(body)} bytes: at most {MAX_UPLOAD}", field="file")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(msg, EmailMessage) or not msg.is_multipart():
        raise ValidationError(
            "malformed multipart/form-data body: no boundary, or no part delimited by it",
            field="body",
        )
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            data = part.get_payload(decode=True)
            if not isinstance(data, bytes):
                break
            return data
    raise ValidationError("the multipart/form-data body has no part named 'file'", field="file")


def event_from_file(service: str, data: bytes) -> dict[str, Any]:
    """The event for the service named `service` from a file's bytes (`yunhan ai call
    --file`; a multipart upload's `file` part), checked as `event_from_upload` does."""
    return _file_event(_lookup(service), data)


def _file_event(svc: ServiceDef, data: bytes) -> dict[str, Any]:
    if len(data) > MAX_UPLOAD:
        raise ValidationError(f"file of {len(data)} bytes: at most {MAX_UPLOAD}", field="file")
    if svc.field == "text":
        try:
            return {"text": data.decode("utf-8")}
        except UnicodeDecodeError as exc:
            raise ValidationError(
                f"{svc.name}: the file is not UTF-8 text ({exc})", field="file"
            ) from exc
    if svc.field == "image" and image_format(data) is None:
        raise ValidationError(
            f"{svc.name}: the file ({len(data)} bytes, starting {data[:8]!r}) is not an "
            "image: send PNG, JPEG, BMP, TIFF or WebP",
            field="file",
        )
    if svc.field == "audio" and not is_wav(data):
        raise ValidationError(
            f"{svc.name}: the file ({len(data)} bytes, starting {data[:8]!r}) is not a WAV "
            "file: send 16-bit PCM WAV",
            field="file",
        )
    return {svc.field: base64.b64encode(data).decode("ascii")}
