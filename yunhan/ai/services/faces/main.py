"""Face detection: `{"image": base64}` -> `{"faces": [{x, y, w, h}]}`.

OpenCV's Haar cascade for frontal faces (Viola-Jones), from the cascades the opencv-python
4.x wheel ships in `cv2.data` (5.x no longer ships them). Loaded once at import.
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

cv2.setNumThreads(1)  # a worker gets a fraction of a core; more workers scale instead
_CASCADE_FILE = os.path.join(
    os.path.dirname(cv2.__file__), "data", "haarcascade_frontalface_default.xml"
)
_CASCADE = cv2.CascadeClassifier(_CASCADE_FILE)
if _CASCADE.empty():
    raise RuntimeError(f"cannot load the Haar cascade {_CASCADE_FILE}")


def _image(event: Any) -> np.ndarray[Any, Any]:
    if not isinstance(event, dict) or not isinstance(event.get("image"), str):
        raise ValueError('expected {"image": "<base64 of a PNG, JPEG, BMP, TIFF or WebP>"}')
    try:
        raw = base64.b64decode(event["image"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image: not valid base64 ({exc})") from exc
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE) if raw else None
    if img is None:
        raise ValueError(
            f"image: {len(raw)} bytes that are not an image OpenCV can decode "
            "(send PNG, JPEG, BMP, TIFF or WebP)"
        )
    return img


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Boxes of the frontal faces found, in pixels, largest first. `minSize` (pixels,
    default 30) skips smaller faces."""
    gray = cv2.equalizeHist(_image(event))
    side = max(1, int(event.get("minSize", 30)))
    found = _CASCADE.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    faces = [{"x": int(x), "y": int(y), "w": int(w), "h": int(h)} for x, y, w, h in found]
    faces.sort(key=lambda f: f["w"] * f["h"], reverse=True)
    return {"faces": faces, "width": int(gray.shape[1]), "height": int(gray.shape[0])}
