"""English sentiment: `{"text": "..."}` -> VADER's scores and a label.

VADER (vaderSentiment) is a lexicon and rules; the lexicon ships in the package. The label
follows VADER's own thresholds on the compound score: >= 0.05 positive, <= -0.05
negative, neutral between.
"""

from __future__ import annotations

from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

_ANALYZER = SentimentIntensityAnalyzer()
MAX_TEXT = 100_000


def label(compound: float) -> str:
    if compound >= 0.05:
        return "positive"
    if compound <= -0.05:
        return "negative"
    return "neutral"


def handler(event: Any, context: Any) -> dict[str, Any]:
    """`{"neg", "neu", "pos", "compound", "label"}` for the whole text."""
    if not isinstance(event, dict) or not isinstance(event.get("text"), str):
        raise ValueError('expected {"text": "<some English text>"}')
    text = event["text"]
    if len(text) > MAX_TEXT:
        raise ValueError(f"text: {len(text)} characters, at most {MAX_TEXT}")
    scores = {k: float(v) for k, v in _ANALYZER.polarity_scores(text).items()}
    return {**scores, "label": label(scores["compound"])}
