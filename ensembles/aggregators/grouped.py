"""Dawid-Skene over look-alike groups: members serving one model are one latent worker.

Why: prompt variants or replicas of one model share their mistakes (measured on the local pool: error
correlation 0.5-0.6 between variants of one model, 1.0 between replicas); Dawid-Skene, which assumes
independent workers, counts one shared mistake once per member, so a block of three look-alikes outvotes a
better member and a person together (DESIGN.md). Here each group's votes on an item become one soft vote, the
mean of its members' votes (soft ones as they are, hard ones one-hot), and Dawid-Skene (soft EM, gold-anchored:
soft_em.py) learns one confusion matrix per group. Members outside any group are workers of their own. The
reference's open call (Liu & Hou, "Aggregating Crowd of LLMs", EACL 2026) is aggregation that knows its workers
are correlated; this is its simplest form, known correlation from the pool's own configuration
(FitData.groups: the refit groups members by the model they serve).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ensembles.aggregators.base import FitData, Params
from ensembles.aggregators.dawid_skene import DawidSkene
from ensembles.votes import Vote

GROUP = "group:"
"""Prefix of a group's merged vote's member name."""


def merged(votes: Sequence[Vote], group_of: Mapping[str, str], labels: Sequence[str]) -> list[Vote]:
    """The votes with each group's members' valid votes replaced by one soft vote, their mean."""
    if not group_of:
        return list(votes)
    k = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    sums: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    out = []
    for vote in votes:
        group = group_of.get(vote.member)
        if group is None or vote.label is None:
            out.append(vote)
            continue
        probs = vote.probs if vote.probs is not None and len(vote.probs) == k else None
        total = sums.setdefault(group, [0.0] * k)
        if probs is None:
            total[index[vote.label]] += 1.0
        else:
            for i, p in enumerate(probs):
                total[i] += p
        counts[group] = counts.get(group, 0) + 1
    for group, total in sums.items():
        mean = tuple(x / counts[group] for x in total)
        out.append(Vote(GROUP + group, labels[max(range(k), key=mean.__getitem__)], None, mean))
    return out


class GroupedDawidSkene(DawidSkene):
    name = "grouped_dawid_skene"

    def fit(self, data: FitData) -> Params:
        """Dawid-Skene's fit on the merged votes, and the member -> group map it was fitted with."""
        group_of = dict(data.groups)
        votes = {item: merged(vs, group_of, data.labels) for item, vs in data.votes.items()}
        return {**super().fit(FitData(data.labels, votes, data.gold, min_gold=data.min_gold)), "group_of": group_of}

    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        return super().combine(merged(votes, (params or {}).get("group_of") or {}, labels), labels, params)
