"""The vote store interface and its in-memory backend (the default).

Every vote is kept with its item (id, schema, label set, text), so member reliability can be
refitted later, a human can review an item, and aggregates can be recomputed under newer
parameters. Gold and human labels, published parameters and the review queue live here too.
The Redis backend (votes_redis.py) implements the same interface for several replicas.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ensembles.aggregators.base import Triple
from ensembles.refit import hard_triples
from ensembles.votes import HUMAN_PREFIX
from gateway.store.locks import MemoryLocks
from gateway.store.sampling import FitVotes, sample_positions
from gateway.tenancy import DEFAULT, owns

Source = Literal["gold", "human"]


@dataclass
class ItemRecord:
    item_id: str
    schema: str
    labels: list[str]
    text: str
    ensemble: str
    created: float = field(default_factory=time.time)

    def wire(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Published:
    version: int
    params: dict[str, Any]


class VoteStore(ABC):
    """Async so the Redis backend never blocks the event loop; the memory backend just returns."""

    @abstractmethod
    async def record(self, item: ItemRecord, votes: list[dict[str, Any]]) -> None:
        """Keep an item's votes (wire dicts); an item seen again gets the new votes appended."""

    @abstractmethod
    async def item(self, item_id: str) -> tuple[ItemRecord, list[dict[str, Any]]] | None: ...

    @abstractmethod
    async def item_votes(self, schema: str) -> dict[str, list[dict[str, Any]]]:
        """Every vote of a schema by item, soft votes included (human labels as members `human:<who>`)."""

    @abstractmethod
    async def fit_votes(self, schema: str, max_items: int) -> FitVotes:
        """What a refit reads (gateway/store/sampling.py): the votes of every gold item and every item people
        labelled, and of at most `max_items` others, without reading the rest; items without votes left out."""

    async def triples(self, schema: str) -> list[Triple]:
        """Every valid hard vote of a schema, the unit crowd-kit fits on."""
        return hard_triples(await self.item_votes(schema))

    @abstractmethod
    async def add_label(self, item: ItemRecord, label: str, source: Source, who: str) -> bool:
        """A gold label (kept apart, for anchoring and calibration) or a human vote on the item; True when it is
        the item's first gold label (the quality metrics check each item against gold once)."""

    @abstractmethod
    async def gold(self, schema: str) -> dict[str, str]: ...

    @abstractmethod
    async def schemas(self) -> dict[str, list[str]]:
        """Schema -> label set, for every schema that has votes."""

    @abstractmethod
    async def pending(self, schema: str) -> tuple[int, float | None]:
        """(new items since the schema's last refit began, when it began in wall-clock seconds, None if never):
        shared by every replica, so they agree on when a refit is due."""

    @abstractmethod
    async def take_new_items(self, schema: str, now: float) -> int:
        """A refit of the schema begins at `now`: its new items, and the count reset."""

    @abstractmethod
    async def publish(self, schema: str, aggregator: str, params: dict[str, Any]) -> int:
        """Store new fitted parameters; returns their version (1, 2, ...)."""

    @abstractmethod
    async def published(self) -> tuple[int, dict[tuple[str, str], Published]]:
        """(global version, all published parameters by (schema, aggregator))."""

    @abstractmethod
    async def published_version(self) -> int:
        """Cheap check: changes whenever any parameters are published."""

    @abstractmethod
    async def enqueue_review(self, entry: dict[str, Any]) -> None: ...

    @abstractmethod
    async def reviews(self, limit: int, tenant: str = DEFAULT) -> list[dict[str, Any]]:
        """The oldest `limit` queued items of `tenant`."""

    @abstractmethod
    async def resolve_review(self, item_id: str) -> bool: ...

    @abstractmethod
    async def review_count(self) -> int: ...

    @abstractmethod
    async def try_lock(self, name: str, ttl_s: float) -> bool:
        """A best-effort lease so one replica refits a schema at a time."""

    @abstractmethod
    async def unlock(self, name: str) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise (RedisError, OSError) when the store cannot be used: what /readyz checks."""

    async def close(self) -> None:
        return None


class MemoryVoteStore(VoteStore):
    async def ping(self) -> None:
        """This process's memory is usable whenever the process answers."""

    def __init__(self, retention_s: float = 30 * 86400) -> None:
        self.retention_s = retention_s
        self.items: dict[str, ItemRecord] = {}
        self.votes: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        """Item id -> member -> its latest vote: re-asking an item replaces votes, never stacks them."""
        self.order: dict[str, list[str]] = defaultdict(list)
        """Schema -> its item ids in arrival order from `head[schema]` on (the expired ones before it)."""
        self.head: dict[str, int] = defaultdict(int)
        self.people: dict[str, dict[str, None]] = defaultdict(dict)
        """Schema -> the items people labelled (insertion-ordered set)."""
        self.gold_labels: dict[str, dict[str, str]] = defaultdict(dict)
        self.new: dict[str, int] = defaultdict(int)
        self.refitted: dict[str, float] = {}
        self.params: dict[tuple[str, str], Published] = {}
        self.version = 0
        self.queue: dict[str, dict[str, Any]] = {}
        self.locks = MemoryLocks()
        self.label_sets: dict[str, list[str]] = {}

    def _expire(self) -> None:
        """Drop items past the retention, oldest first: `items` is in arrival order, so this is amortised O(1)."""
        cutoff = time.time() - self.retention_s
        while self.items:
            oldest = next(iter(self.items.values()))
            if oldest.created >= cutoff:
                break
            del self.items[oldest.item_id]
            self.votes.pop(oldest.item_id, None)
            self.people[oldest.schema].pop(oldest.item_id, None)
            self._advance(oldest.schema)

    def _advance(self, schema: str) -> None:
        """Move the schema's head past expired items; compact its order once most of it is expired."""
        order, head = self.order[schema], self.head[schema]
        while head < len(order) and order[head] not in self.items:
            head += 1
        if head > 1024 and 2 * head > len(order):
            del order[:head]
            head = 0
        self.head[schema] = head

    def _add(self, item: ItemRecord) -> None:
        self.items[item.item_id] = item
        self.order[item.schema].append(item.item_id)
        self.label_sets[item.schema] = item.labels

    async def record(self, item: ItemRecord, votes: list[dict[str, Any]]) -> None:
        if item.item_id in self.items:
            self.items[item.item_id] = item
        else:
            self.new[item.schema] += 1
            self._expire()
            self._add(item)
        self.votes[item.item_id].update((v["member"], v) for v in votes)
        if any(v["member"].startswith(HUMAN_PREFIX) for v in votes):
            self.people[item.schema][item.item_id] = None

    async def item(self, item_id: str) -> tuple[ItemRecord, list[dict[str, Any]]] | None:
        rec = self.items.get(item_id)
        return (rec, list(self.votes[item_id].values())) if rec else None

    async def item_votes(self, schema: str) -> dict[str, list[dict[str, Any]]]:
        return {i: list(self.votes[i].values()) for i in self.order[schema][self.head[schema]:] if i in self.items}

    async def fit_votes(self, schema: str, max_items: int) -> FitVotes:
        order, head = self.order[schema], self.head[schema]
        recent, older = sample_positions(schema, len(order) - head, max_items)
        chosen = dict.fromkeys([*self.gold_labels[schema], *self.people[schema],
                                *(order[head + p] for p in older), *(order[head + p] for p in recent)])
        votes = {i: list(self.votes[i].values()) for i in chosen if i in self.items and self.votes.get(i)}
        return FitVotes(votes, len(order) - head)

    async def add_label(self, item: ItemRecord, label: str, source: Source, who: str) -> bool:
        if item.item_id not in self.items:
            self._add(item)
        if source == "gold":
            first = item.item_id not in self.gold_labels[item.schema]
            self.gold_labels[item.schema][item.item_id] = label
            return first
        self.votes[item.item_id][HUMAN_PREFIX + who] = {"member": HUMAN_PREFIX + who, "label": label, "raw": label}
        self.people[item.schema][item.item_id] = None
        self.new[item.schema] += 1
        return False

    async def gold(self, schema: str) -> dict[str, str]:
        return dict(self.gold_labels[schema])

    async def schemas(self) -> dict[str, list[str]]:
        return dict(self.label_sets)

    async def pending(self, schema: str) -> tuple[int, float | None]:
        return self.new.get(schema, 0), self.refitted.get(schema)

    async def take_new_items(self, schema: str, now: float) -> int:
        self.refitted[schema] = now
        return self.new.pop(schema, 0)

    async def publish(self, schema: str, aggregator: str, params: dict[str, Any]) -> int:
        key = (schema, aggregator)
        version = self.params[key].version + 1 if key in self.params else 1
        self.params[key] = Published(version, params)
        self.version += 1
        return version

    async def published(self) -> tuple[int, dict[tuple[str, str], Published]]:
        return self.version, dict(self.params)

    async def published_version(self) -> int:
        return self.version

    async def enqueue_review(self, entry: dict[str, Any]) -> None:
        self.queue[entry["item_id"]] = entry

    async def reviews(self, limit: int, tenant: str = DEFAULT) -> list[dict[str, Any]]:
        mine = [e for item_id, e in self.queue.items() if owns(tenant, item_id)]
        return sorted(mine, key=lambda e: e["queued_at"])[:limit]

    async def resolve_review(self, item_id: str) -> bool:
        return self.queue.pop(item_id, None) is not None

    async def review_count(self) -> int:
        return len(self.queue)

    async def try_lock(self, name: str, ttl_s: float) -> bool:
        return await self.locks.try_lock(name, ttl_s)

    async def unlock(self, name: str) -> None:
        await self.locks.unlock(name)
