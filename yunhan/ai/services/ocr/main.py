"""OCR (Chinese and English): `{"image": base64}` -> `{"lines": [{text, confidence, box}]}`.

RapidOCR runs PaddleOCR's PP-OCRv4 detection and recognition models on onnxruntime; the
models ship inside the rapidocr-onnxruntime wheel, so nothing is downloaded (the worker has
no network). The engine is built at import, during the cold start, so that every warm
invocation pays only for inference.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

# Before numpy: OpenBLAS starts a thread per core when it loads, while a worker's cgroup
# allows 64 tasks (pids.max) on a host of any size, and a worker serves one request at a
# time (more workers scale). The function's env may still choose otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
from rapidocr_onnxruntime import RapidOCR

# One thread (onnxruntime's and OpenCV's pools): a worker's CPU share is a fraction of a
# core (shares follow memory); concurrency comes from more workers (docs/ai.md measures).
cv2.setNumThreads(1)
_ENGINE = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)


def _image(event: Any) -> np.ndarray[Any, Any]:
    if not isinstance(event, dict) or not isinstance(event.get("image"), str):
        raise ValueError('expected {"image": "<base64 of a PNG, JPEG, BMP, TIFF or WebP>"}')
    try:
        raw = base64.b64decode(event["image"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image: not valid base64 ({exc})") from exc
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
    if img is None:
        raise ValueError(
            f"image: {len(raw)} bytes that are not an image OpenCV can decode "
            "(send PNG, JPEG, BMP, TIFF or WebP)"
        )
    return img


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Each recognised line: its text, the recogniser's confidence (0..1) and its box as
    four [x, y] corners (pixels, clockwise from top left)."""
    img = _image(event)
    found, _elapsed = _ENGINE(img)
    lines = [
        {
            "text": str(text),
            "confidence": round(float(score), 4),
            "box": [[round(float(x), 1), round(float(y), 1)] for x, y in box],
        }
        for box, text, score in (found or [])
    ]
    return {"lines": lines, "width": int(img.shape[1]), "height": int(img.shape[0])}
