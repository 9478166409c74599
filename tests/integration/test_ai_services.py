"""The AI services (issue 11, item 5) as the cloud runs them: each service's shipped source
deployed into a real FunctionRuntime (zygote, workers in cgroups with the service's memory
limit, their own uid, a network namespace with only lo, read-only code) and invoked on
inputs the test makes itself: a PNG rendered with a Debian CJK font, sentences in several
languages, scikit-image's bundled astronaut photograph, speech synthesised by espeak-ng.

Each service keeps one warm worker for the module (its model loaded once); the workers'
peak memory (their memory cgroup) and latencies are printed: `pytest -s` shows them.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.aiinputs import png as _png
from tests.fnruntime import running
from yunhan.ai import SERVICES, service
from yunhan.functions import FunctionRuntime, FunctionSpec, Invocation, Worker

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def rt(run_prefix: str) -> Iterator[FunctionRuntime]:
    with running(run_prefix, "ai") as runtime:
        yield runtime


@pytest.fixture(scope="module")
def workers(rt: FunctionRuntime, run_prefix: str) -> Iterator[dict[str, Worker]]:
    """Spawned on first use: a service's deploy check and cold start load its model."""
    made: dict[str, Worker] = {}
    yield made
    for name, w in made.items():
        gone = rt.stop_worker(w)
        svc = service(name)
        print(
            f"{name}: peak memory {gone.max_memory_bytes / 2**20:.0f} MB "
            f"of {svc.memory_mb} MB, cold start {w.cold_start_ms:.0f} ms"
        )


def _worker(rt: FunctionRuntime, workers: dict[str, Worker], name: str) -> Worker:
    w = workers.get(name)
    if w is not None and not w.alive:  # a failed test's worker: a new one, same version
        w = workers[name] = rt.spawn(w.deployment, init_timeout=60.0)
    if w is None:
        svc = service(name)
        spec = FunctionSpec(
            f"{rt.prefix}-{name}", 1, svc.handler, memory_mb=svc.memory_mb, timeout_s=svc.timeout_s
        )
        dep = rt.deploy(spec, svc.source_dir)
        w = workers[name] = rt.spawn(dep, init_timeout=60.0)
    return w


def _call(rt: FunctionRuntime, workers: dict[str, Worker], name: str, event: Any) -> Invocation:
    w = _worker(rt, workers, name)
    t0 = time.monotonic()
    inv = rt.invoke(w, event)
    print(f"{name}: {(time.monotonic() - t0) * 1e3:.0f} ms (handler {inv.duration_ms:.0f} ms)")
    return inv


def _ok(inv: Invocation) -> Any:
    assert inv.ok, f"{inv.error}\n{inv.traceback}"
    return inv.result


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_every_service_ships_its_source_and_fits_its_worker() -> None:
    for name, svc in SERVICES.items():
        assert svc.name == name
        assert (svc.source_dir / "main.py").is_file()


def test_ocr_reads_chinese_and_english_with_boxes(
    rt: FunctionRuntime, workers: dict[str, Worker]
) -> None:
    png = _png(["你好世界", "Hello World"])
    result = _ok(_call(rt, workers, "ocr", {"image": _b64(png)}))
    texts = [line["text"].replace(" ", "") for line in result["lines"]]
    assert "你好世界" in texts, result
    assert "HelloWorld" in texts, result
    for line in result["lines"]:
        assert 0.5 < line["confidence"] <= 1
        assert len(line["box"]) == 4
        assert all(0 <= x <= 640 and 0 <= y <= 200 for x, y in line["box"])
    # Top to bottom, as drawn: the Chinese line's box is above the English one's.
    ys = {t: line["box"][0][1] for t, line in zip(texts, result["lines"], strict=True)}
    assert ys["你好世界"] < ys["HelloWorld"]


def test_ocr_refuses_what_is_not_an_image_and_goes_on_working(
    rt: FunctionRuntime, workers: dict[str, Worker]
) -> None:
    bad = _call(rt, workers, "ocr", {"image": _b64(b"this is plain text, not a picture")})
    assert not bad.ok and not bad.worker_exited
    assert "ValueError" in (bad.error or "") and "not an image" in (bad.error or "")
    assert not _call(rt, workers, "ocr", {"text": "hello"}).ok  # the wrong field
    assert not _call(rt, workers, "ocr", {"image": "***"}).ok  # not base64
    png = _png(["OK 42"])
    result = _ok(_call(rt, workers, "ocr", {"image": _b64(png)}))
    assert [line["text"].replace(" ", "") for line in result["lines"]] == ["OK42"]


def test_langid_names_the_language_of_sentences_in_several(
    rt: FunctionRuntime, workers: dict[str, Worker]
) -> None:
    sentences = {
        "en": "The weather is lovely today and we are going to the seaside.",
        "fr": "Le temps est magnifique aujourd'hui et nous allons à la plage.",
        "de": "Das Wetter ist heute herrlich und wir fahren an den Strand.",
        "es": "Hoy hace un tiempo estupendo y vamos a ir a la playa.",
        "zh": "今天天气很好，我们要去海边玩。",  # noqa: RUF001 (Chinese punctuation)
        "ru": "Сегодня прекрасная погода, и мы едем на море.",
        "ja": "今日はとても良い天気なので、私たちは海に行きます。",
    }
    for lang, text in sentences.items():
        result = _ok(_call(rt, workers, "langid", {"text": text}))
        assert result["language"] == lang, (text, result)
        assert 0.5 < result["score"] <= 1
    assert not _call(rt, workers, "langid", {"text": "  "}).ok


def test_sentiment_tells_positive_from_negative(
    rt: FunctionRuntime, workers: dict[str, Worker]
) -> None:
    positive = ["I love this, it is wonderful and works great!", "What a happy, sunny day :)"]
    negative = ["This is terrible. I hate it and it broke again.", "The service was awful."]
    for text in positive:
        r = _ok(_call(rt, workers, "sentiment", {"text": text}))
        assert r["label"] == "positive" and r["compound"] >= 0.05, r
        assert {"neg", "neu", "pos", "compound"} <= r.keys()
    for text in negative:
        r = _ok(_call(rt, workers, "sentiment", {"text": text}))
        assert r["label"] == "negative" and r["compound"] <= -0.05, r
    neutral = _ok(_call(rt, workers, "sentiment", {"text": "The meeting is on Tuesday at three."}))
    assert neutral["label"] == "neutral", neutral


def test_faces_finds_the_astronaut_in_scikit_images_photograph(
    rt: FunctionRuntime, workers: dict[str, Worker]
) -> None:
    from PIL import Image
    from skimage import data  # astronaut.png ships inside the wheel (no download)

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, "PNG")  # Eileen Collins, 512x512
    result = _ok(_call(rt, workers, "faces", {"image": _b64(buf.getvalue())}))
    assert (result["width"], result["height"]) == (512, 512)
    assert len(result["faces"]) == 1, result
    f = result["faces"][0]
    cx, cy = f["x"] + f["w"] / 2, f["y"] + f["h"] / 2
    assert 180 < cx < 270 and 70 < cy < 160 and 60 < f["w"] < 140, f  # her face
    blank = io.BytesIO()
    Image.new("RGB", (200, 200), "white").save(blank, "PNG")
    assert _ok(_call(rt, workers, "faces", {"image": _b64(blank.getvalue())}))["faces"] == []
    bad = _call(rt, workers, "faces", {"image": _b64(b"GIF? no: text")})
    assert not bad.ok and "not an image" in (bad.error or "")


NUMBERS = "one two three four five six seven eight nine ten"


def test_speech_transcribes_what_espeak_ng_says(
    rt: FunctionRuntime, workers: dict[str, Worker], tmp_path: Path
) -> None:
    if not shutil.which("espeak-ng"):
        pytest.fail("espeak-ng is missing: run scripts/install.sh")
    wav = tmp_path / "numbers.wav"
    # A female en-us voice at 120 words a minute: the one PocketSphinx's en-us model
    # follows best among espeak-ng's (22.05 kHz; the handler resamples to 16 kHz).
    subprocess.run(
        ["espeak-ng", "-v", "en-us+f2", "-s", "120", "-w", str(wav), NUMBERS], check=True
    )
    result = _ok(_call(rt, workers, "speech", {"audio": _b64(wav.read_bytes())}))
    heard = set(result["text"].split())
    assert len(heard & set(NUMBERS.split())) >= 6, result
    assert 2 < result["seconds"] < 10
    bad = _call(rt, workers, "speech", {"audio": _b64(b"RIFF....not a wave file at all")})
    assert not bad.ok and "not a PCM WAV file" in (bad.error or "")
