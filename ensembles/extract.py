"""Raw model text -> a label of the set; token log-probabilities -> a soft vote.

Why forgiving: small models wrap labels in quotes, punctuation, JSON or extra words. Anything
that still maps to exactly one label counts; anything else is an abstention with a reason,
never an exception.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

_EDGE = re.compile(r"^[\s\"'`*_.,:;!?()\[\]{}<>-]+|[\s\"'`*_.,:;!?()\[\]{}<>-]+$")
_SPACE = re.compile(r"[\s_-]+")


def fold(text: str) -> str:
    """Case-, space- and edge-punctuation-insensitive form used for matching."""
    return _SPACE.sub(" ", _EDGE.sub("", text).casefold()).strip()


_fold_cached = functools.lru_cache(maxsize=4096)(fold)
_SHORT = 256


def fold_short(text: str) -> str:
    """`fold`, cached for short strings: every soft vote folds its top tokens and the labels, drawn from a small
    vocabulary (the bound on length keeps a member's odd tokens from filling memory)."""
    return _fold_cached(text) if len(text) <= _SHORT else fold(text)


def parse_answer(raw: str | None, labels: Sequence[str]) -> tuple[str | None, str | None]:
    """Map a raw answer to one label; returns (label, None) or (None, reason)."""
    if raw is None or not raw.strip():
        return None, "empty answer"
    folded = {fold(label): label for label in labels}
    text = _from_json(raw.strip())
    key = fold(text)
    if key in folded:
        return folded[key], None
    # The answer starts with exactly one label ("positive sentiment", "negative.\nBecause...").
    starts = [label for f, label in folded.items() if key.startswith(f + " ") or key == f]
    if len(starts) == 1:
        return starts[0], None
    # The answer is an unambiguous prefix of one label ("pos" -> "positive").
    prefixed = [label for f, label in folded.items() if key and f.startswith(key)]
    if len(prefixed) == 1:
        return prefixed[0], None
    snippet = raw.strip()[:60]
    return None, f"answer {snippet!r} matches no label"  # the label set is the request's: not repeated per vote


def _from_json(text: str) -> str:
    """`{"label": "x"}` or `"x"` -> `x`; anything else unchanged."""
    if not text.startswith(("{", '"')):
        return text
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        strings = [v for v in value.values() if isinstance(v, str)]
        if "label" in value and isinstance(value["label"], str):
            return value["label"]
        if len(strings) == 1:
            return strings[0]
    return text


def soft_vote(choice: Mapping[str, Any], labels: Sequence[str]) -> tuple[float, ...] | None:
    """A distribution over `labels` from the first answer token's top log-probabilities.

    Each candidate token that is a non-empty prefix of exactly one label gives that label its
    probability; the result is renormalised over the labels. Returns None when the member sent
    no log-probabilities or none of them identifies a label (the hard vote is used then).
    """
    return _soft(_first_top_logprobs(choice.get("logprobs")), labels)


def _soft(top: list[tuple[str, float]], labels: Sequence[str]) -> tuple[float, ...] | None:
    if not top:
        return None
    folded = [fold_short(label) for label in labels]
    mass = [0.0] * len(labels)
    for token, logprob in top:
        piece = fold_short(token)
        if not piece:
            continue
        hits = [i for i, f in enumerate(folded) if f.startswith(piece)]
        if len(hits) == 1:
            mass[hits[0]] += math.exp(logprob)
    total = sum(mass)
    if total <= 0.0:
        return None
    return tuple(m / total for m in mass)


def decisive_vote(choice: Mapping[str, Any], labels: Sequence[str]) -> tuple[float, ...] | None:
    """The soft vote of a one-forward-pass answer, when its most likely first token names exactly one label.

    With `max_tokens: 1` the answer is the first token's distribution; it decides only if the top token is a
    prefix of one label (" pos" of "positive"), not of several (" search" of two intents) or of none (" The").
    None sends the caller back to constrained decoding.
    """
    top = _first_top_logprobs(choice.get("logprobs"))
    if not top:
        return None
    token = max(top, key=lambda pair: pair[1])[0]
    piece = fold_short(token)
    if not piece or sum(fold_short(label).startswith(piece) for label in labels) != 1:
        return None
    return _soft(top, labels)


def _first_top_logprobs(logprobs: Any) -> list[tuple[str, float]]:
    """Candidates for the first token, from the chat or the legacy completions shape.

    A member's log-probabilities are untrusted input: any entry that is not a (string token, finite
    log-probability <= 0) pair makes the whole soft vote unusable, and the hard vote stands alone.
    """
    if not isinstance(logprobs, Mapping):
        return []
    content = logprobs.get("content")
    if isinstance(content, list):  # chat: {"content": [{"token", "logprob", "top_logprobs": [...]}, ...]}
        for entry in content:
            if not isinstance(entry, Mapping):
                return []
            tops = entry.get("top_logprobs") or [entry]
            if not isinstance(tops, list) or not all(isinstance(t, Mapping) for t in tops):
                return []
            pairs = _checked([(t.get("token"), t.get("logprob")) for t in tops])
            if pairs is None:
                return []
            if any(fold_short(token) for token, _ in pairs):
                return pairs
        return []
    tops = logprobs.get("top_logprobs")  # completions: {"top_logprobs": [{token: logprob}, ...]}
    if isinstance(tops, list):
        for entry in tops:
            if not isinstance(entry, Mapping):
                return []
            pairs = _checked(list(entry.items()))
            if pairs is None:
                return []
            if any(fold_short(token) for token, _ in pairs):
                return pairs
    return []


def _checked(pairs: list[tuple[Any, Any]]) -> list[tuple[str, float]] | None:
    out = []
    for token, logprob in pairs:
        if not isinstance(token, str) or isinstance(logprob, bool) or not isinstance(logprob, (int, float)):
            return None
        if not (math.isfinite(logprob) and logprob <= 1e-6):
            return None
        out.append((token, float(min(logprob, 0.0))))
    return out
