"""English speech to text: `{"audio": base64 WAV}` -> `{"text": "..."}`.

CMU PocketSphinx with the en-us acoustic model, language model and dictionary that ship
inside the pocketsphinx wheel. The model wants 16 kHz mono 16-bit audio: other rates are
resampled here (numpy's FFT, no other dependency), stereo is averaged to mono.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import wave
from typing import Any

# Before numpy: OpenBLAS starts a thread per core when it loads, while a worker's cgroup
# allows 64 tasks (pids.max) on a host of any size, and a worker serves one request at a
# time (more workers scale). The function's env may still choose otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from pocketsphinx import Decoder

RATE = 16000
MAX_SECONDS = 60
# Silence around the speech: the decoder's live cepstral mean normalisation starts from a
# prior and adapts over the first frames, which otherwise mangles the first words.
PAD = np.zeros(RATE // 4, np.int16)

_DECODER = Decoder(samprate=RATE, loglevel="FATAL")


def _pcm(event: Any) -> np.ndarray[Any, Any]:
    if not isinstance(event, dict) or not isinstance(event.get("audio"), str):
        raise ValueError('expected {"audio": "<base64 of a WAV file (PCM)>"}')
    try:
        raw = base64.b64decode(event["audio"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"audio: not valid base64 ({exc})") from exc
    try:
        with wave.open(io.BytesIO(raw)) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            if w.getnframes() > MAX_SECONDS * rate:
                raise ValueError(f"audio: longer than {MAX_SECONDS} s")
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"audio: {len(raw)} bytes that are not a PCM WAV file ({exc})") from exc
    if width != 2:
        raise ValueError(f"audio: {8 * width}-bit samples; send 16-bit PCM")
    x = np.frombuffer(frames, "<i2").astype(np.float64)
    if channels > 1:
        x = x[: len(x) - len(x) % channels].reshape(-1, channels).mean(axis=1)
    if rate != RATE and len(x):
        n, m = len(x), round(len(x) * RATE / rate)
        x = np.fft.irfft(np.fft.rfft(x)[: m // 2 + 1], m) * (m / n)
    return np.concatenate([PAD, np.clip(x, -32768, 32767).astype(np.int16), PAD])


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The best hypothesis (lower case words) and the audio's length in seconds."""
    pcm = _pcm(event)
    _DECODER.start_utt()
    _DECODER.process_raw(pcm.tobytes(), full_utt=True)
    _DECODER.end_utt()
    hyp = _DECODER.hyp()
    return {"text": hyp.hypstr if hyp is not None else "", "seconds": round(len(pcm) / RATE, 3)}
