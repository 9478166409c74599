"""The AI services' catalog: which services exist, and how an upload becomes an event
(no model is loaded here: the catalog is what the server and the CLI import)."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys

import httpx
import pytest

from yunhan.ai import SERVICES, ServiceDef, event_from_upload, service
from yunhan.ai.catalog import MAX_UPLOAD, image_format, is_wav
from yunhan.errors import ValidationError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) + b"\r\n\n\r"
WAV = b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + bytes(24)


def _multipart(data: bytes, name: str = "file", **fields: str) -> tuple[str, bytes]:
    """A body as a real client (httpx) encodes it, with its content type."""
    req = httpx.Request(
        "POST", "http://x/v1/ai/ocr", files={name: ("upload.bin", data)}, data=fields
    )
    return req.headers["content-type"], req.read()


def test_the_five_services_each_with_shipped_code() -> None:
    assert set(SERVICES) == {"ocr", "langid", "sentiment", "faces", "speech"}
    for name, svc in SERVICES.items():
        assert isinstance(svc, ServiceDef) and svc is service(name)
        assert svc.handler == "main.handler"
        assert (svc.source_dir / "main.py").is_file()
        assert 64 <= svc.memory_mb <= 2048 and 0 < svc.timeout_s <= 900
    assert service("ocr").memory_mb >= 768  # two ONNX models: about 600 MB measured


def test_an_unknown_service_names_the_known_ones() -> None:
    with pytest.raises(ValidationError) as err:
        service("translate")
    assert "unknown AI service 'translate'" in err.value.message
    assert "faces, langid, ocr, sentiment, speech" in err.value.message
    with pytest.raises(ValidationError, match="unknown AI service"):
        event_from_upload("nope", "application/json", b'{"text": "x"}')


@pytest.mark.parametrize("size", [0, 1, 100, 4096])
def test_a_multipart_file_comes_back_byte_for_byte_as_base64(size: int) -> None:
    # Bytes that look like multipart syntax (CRLF, dashes) must survive the parse.
    data = PNG + (b"\r\n--\r\r\n\n\x00\xff" * size)[:size]
    ctype, body = _multipart(data, note="ignored")
    event = event_from_upload("ocr", ctype, body)
    assert set(event) == {"image"}
    assert base64.b64decode(event["image"]) == data


def test_the_event_field_follows_the_service() -> None:
    assert set(event_from_upload("faces", *_multipart(PNG))) == {"image"}
    assert base64.b64decode(event_from_upload("speech", *_multipart(WAV))["audio"]) == WAV
    text = "Ceci est une phrase en français."
    assert event_from_upload("langid", *_multipart(text.encode())) == {"text": text}
    with pytest.raises(ValidationError, match="not UTF-8"):
        event_from_upload("sentiment", *_multipart(b"\xff\xfe\x00bad"))


def test_a_file_that_is_not_an_image_or_not_a_wav_is_refused_clearly() -> None:
    with pytest.raises(ValidationError) as err:
        event_from_upload("ocr", *_multipart(b"hello, I am text"))
    assert "is not an image" in err.value.message and "PNG, JPEG" in err.value.message
    with pytest.raises(ValidationError, match="is not an image"):
        event_from_upload("faces", *_multipart(WAV))
    with pytest.raises(ValidationError, match="is not a WAV"):
        event_from_upload("speech", *_multipart(PNG))


def test_a_multipart_body_without_a_file_part_or_boundary_is_refused() -> None:
    with pytest.raises(ValidationError, match="no part named 'file'"):
        event_from_upload("ocr", *_multipart(PNG, name="image"))
    with pytest.raises(ValidationError, match="malformed multipart"):
        event_from_upload("ocr", "multipart/form-data", b"no boundary here")
    ctype, _ = _multipart(PNG)
    with pytest.raises(ValidationError, match="malformed multipart"):
        event_from_upload("ocr", ctype, b"garbage without the boundary")


def test_an_upload_above_the_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match="at most"):
        event_from_upload("ocr", *_multipart(PNG + bytes(MAX_UPLOAD)))


def test_json_passes_through_when_it_carries_the_services_field() -> None:
    event = {"image": base64.b64encode(PNG).decode(), "minSize": 40}
    assert (
        event_from_upload("faces", "application/json; charset=utf-8", json.dumps(event).encode())
        == event
    )
    with pytest.raises(ValidationError, match="string field 'text'"):
        event_from_upload("langid", "application/json", b'{"image": "x"}')
    with pytest.raises(ValidationError, match="string field 'audio'"):
        event_from_upload("speech", "application/json", b"[1, 2]")
    with pytest.raises(ValidationError, match="not valid JSON"):
        event_from_upload("langid", "application/json", b"{nope")


def test_other_content_types_are_refused_with_what_to_send() -> None:
    with pytest.raises(ValidationError) as err:
        event_from_upload("ocr", "image/png", PNG)
    assert "'image/png'" in err.value.message and "multipart/form-data" in err.value.message
    with pytest.raises(ValidationError, match=r"'\(none\)'"):
        event_from_upload("ocr", "", PNG)


def test_formats_are_told_by_their_magic_bytes() -> None:
    assert image_format(PNG) == "PNG"
    assert image_format(b"\xff\xd8\xff\xe0rest") == "JPEG"
    assert image_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WebP"
    assert image_format(WAV) is None and image_format(b"") is None
    assert is_wav(WAV) and not is_wav(b"RIFF\x00\x00\x00\x00WEBP")


def test_importing_the_catalog_loads_no_model_library() -> None:
    """The server and the CLI import yunhan.ai: onnxruntime, OpenCV and the rest stay in
    the workers (a fresh interpreter, as sys.modules here may hold anything)."""
    heavy = [
        "cv2",
        "numpy",
        "onnxruntime",
        "rapidocr_onnxruntime",
        "langid",
        "pocketsphinx",
        "vaderSentiment",
        "PIL",
    ]
    code = (
        "import sys, yunhan.ai, yunhan.ai.catalog; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
