"""Odd member replies, for the fake upstream's `raw` script: what a member may send that is not a readable
completion (tests/integration/test_faults.py asserts each is that member's failed vote; bench/faults.py times
them)."""

from __future__ import annotations

ODD_REPLIES = [
    {"choices": [{"message": {"role": "assistant", "content": ["positive"]}}]},
    {"choices": [{"message": {"role": "assistant", "content": 7}}]},
    {"choices": [{"message": {"role": "assistant", "content": {"label": "positive"}}}]},
    {"choices": ["positive"]},
    {"choices": [{"message": "positive"}]},
    {"choices": [{"message": {"content": "positive"}}], "usage": {"prompt_tokens": -5, "completion_tokens": 1}},
    {"choices": [{"message": {"content": "positive"}}], "usage": {"prompt_tokens": "many"}},
    {"choices": [{"message": {"content": "positive"}}], "usage": {"prompt_tokens": 2**64 - 1}},
    {"choices": [{"message": {"content": "positive"}}], "usage": {"completion_tokens": 1e30}},
    [1, 2, 3],
]
ODD_LOGPROBS = [
    {"content": ["not an object"]},
    {"content": [{"token": "positive", "logprob": "high", "top_logprobs": []}]},
    {"content": [{"token": "positive", "logprob": 1000.0, "top_logprobs": [{"token": "positive", "logprob": 1000.0}]}]},
]
