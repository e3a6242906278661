"""Raw model text -> a label of the set; token log-probabilities -> a soft vote in which every label has a
probability (a label the top log-probabilities missed gets its scored probability, or their truncation bound).

Why forgiving: small models wrap labels in quotes, punctuation, JSON or extra words. Anything
that still maps to exactly one label counts; anything else is an abstention with a reason,
never an exception.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

_EDGE = re.compile(r"^[\s\"'`*_.,:;!?()\[\]{}<>-]+|[\s\"'`*_.,:;!?()\[\]{}<>-]+$")
_SPACE = re.compile(r"[\s_-]+")


def fold(text: str) -> str:
    """Case-, space- and edge-punctuation-insensitive form used for matching."""
    return _SPACE.sub(" ", _EDGE.sub("", text).casefold()).strip()


SCORE_FROM = 0.01
"""Truncation bound from which missing labels are scored by one more call (below it the bound stands: 0.01 is
also the least probability stacking tells apart, ensembles/aggregators/stacking.EPS)."""
_LEAST = 1e-6
"""The least probability a label outside the top log-probabilities is given when the top left no mass over."""
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


@dataclass(frozen=True, slots=True)
class FirstToken:
    """What the first answer token's top log-probabilities say of each label: `mass[l]`, the probability of the
    tokens that begin label l alone (0.0 for a label none of the top tokens begins), and `bound`, the most a label
    outside them can have (the least top probability, and no more than the mass the top left over, shared)."""

    mass: tuple[float, ...]
    bound: float

    @property
    def missing(self) -> list[int]:
        """Labels the top log-probabilities did not reach: their probability is unknown, not 0."""
        return [i for i, m in enumerate(self.mass) if m == 0.0]

    @property
    def worth_scoring(self) -> list[int]:
        """Missing labels whose bound is at least SCORE_FROM: only there can a scored probability change a vote."""
        return self.missing if self.bound >= SCORE_FROM else []

    def vote(self, scored: Mapping[int, float] | None = None) -> tuple[float, ...]:
        """The soft vote: the masses with each missing label given its `scored` probability (capped at the bound),
        or the bound itself, renormalised over the labels. Never a 0.0 from truncation."""
        scored = scored or {}
        mass = [m if m > 0.0 else min(scored.get(i, self.bound), self.bound) for i, m in enumerate(self.mass)]
        total = sum(mass)
        return tuple(m / total for m in mass)


def soft_vote(choice: Mapping[str, Any], labels: Sequence[str]) -> tuple[float, ...] | None:
    """A distribution over `labels` from the first answer token's top log-probabilities (FirstToken.vote).

    Returns None when the member sent no log-probabilities or none of them identifies a label (the hard vote is
    used then).
    """
    found = first_token(_first_top_logprobs(choice.get("logprobs")), labels)
    return found.vote() if found is not None else None


def first_token(top: list[tuple[str, float]], labels: Sequence[str]) -> FirstToken | None:
    """Each candidate token that is a non-empty prefix of exactly one label gives that label its probability;
    None when no candidate identifies a label."""
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
    if sum(mass) <= 0.0:
        return None
    probs = [math.exp(logprob) for _, logprob in top]
    missing = max(sum(m == 0.0 for m in mass), 1)
    bound = max(min(min(probs), max(1.0 - sum(probs), 0.0) / missing), _LEAST)
    return FirstToken(tuple(mass), bound)


def decisive_vote(choice: Mapping[str, Any], labels: Sequence[str]) -> FirstToken | None:
    """The first token of a one-forward-pass answer, when its most likely token names exactly one label.

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
    return first_token(top, labels)


def label_logprobs(choices: Sequence[Mapping[str, Any]]) -> list[float] | None:
    """Log-probabilities of each scored label from a scoring reply (dialects.scoring_request): choice 0 is the
    prompt alone, choice j the prompt followed by label j; a label's log-probability is the sum of the prompt
    log-probabilities of its own tokens, those past the prompt's. None when the reply does not have that shape."""
    lists = [c.get("prompt_logprobs") if isinstance(c, Mapping) else None for c in choices]
    if len(lists) < 2 or not all(isinstance(x, list) for x in lists):
        return None
    start = len(lists[0])
    out = []
    for entries in lists[1:]:
        if len(entries) <= start:
            return None
        total = 0.0
        for entry in entries[start:]:
            values = list(entry.values()) if isinstance(entry, Mapping) else []
            logprob = values[0].get("logprob") if len(values) == 1 and isinstance(values[0], Mapping) else None
            if isinstance(logprob, bool) or not isinstance(logprob, (int, float)) or not math.isfinite(logprob):
                return None
            total += min(float(logprob), 0.0)
        out.append(total)
    return out


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
