"""Language identification: `{"text": "..."}` -> `{"language": "fr", "score": 0.99}`.

langid.py's naive Bayes model (97 languages, ISO 639-1 codes) is embedded in the package
itself. Probabilities are normalised, so `score` is the model's confidence in 0..1.

The model is built on the first invocation, not at import: unpacking it (bz2, then
pickle) takes 2.7 s of CPU, and up to 10 s at this worker's small CPU share on a busy
host, which would overrun the runtime's 10 s limit on a cold start (and the deploy
check). The first invocation pays it instead, within the service's timeout.
"""

from __future__ import annotations

import functools
import os
from typing import Any

# Before numpy: OpenBLAS starts a thread per core when it loads, while a worker's cgroup
# allows 64 tasks (pids.max) on a host of any size, and a worker serves one request at a
# time (more workers scale). The function's env may still choose otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from langid.langid import LanguageIdentifier, model

MAX_TEXT = 100_000


@functools.cache
def _identifier() -> Any:
    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The most likely language and its probability; `top` (default 3) ranks that many."""
    if not isinstance(event, dict) or not isinstance(event.get("text"), str):
        raise ValueError('expected {"text": "<some text>"}')
    text = event["text"]
    if not text.strip():
        raise ValueError("text: empty")
    if len(text) > MAX_TEXT:
        raise ValueError(f"text: {len(text)} characters, at most {MAX_TEXT}")
    ranked = _identifier().rank(text)[: max(1, int(event.get("top", 3)))]
    return {
        "language": ranked[0][0],
        "score": round(float(ranked[0][1]), 4),
        "ranking": [{"language": lang, "score": round(float(p), 4)} for lang, p in ranked],
    }
