"""Prometheus metrics of the gateway (names and labels are part of the product: dashboards use them).

Labels stay low-cardinality: ensemble, member, outcome, route, kind; never item ids or text.
Under several uvicorn workers, prometheus-client's multiprocess mode is used when
PROMETHEUS_MULTIPROC_DIR is set (the CLI sets it up before the workers start).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
UNIT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

REQUESTS = Counter("crowd_gateway_requests", "Requests answered, by ensemble or member and outcome",
                   ["ensemble", "outcome"])
REQUEST_DURATION = Histogram("crowd_gateway_request_duration_seconds", "Time to answer a request",
                             ["ensemble"], buckets=LATENCY_BUCKETS)
OVERHEAD = Histogram("crowd_gateway_overhead_seconds", "Gateway time: total minus waiting for upstreams",
                     ["route"], buckets=OVERHEAD_BUCKETS)
UPSTREAM_REQUESTS = Counter("crowd_gateway_upstream_requests", "Calls to members, by outcome",
                            ["member", "outcome"])
UPSTREAM_DURATION = Histogram("crowd_gateway_upstream_duration_seconds", "Member call latency, retries included",
                              ["member"], buckets=LATENCY_BUCKETS)
CONFIDENCE = Histogram("crowd_gateway_confidence", "Confidence of returned labels", ["ensemble"],
                       buckets=UNIT_BUCKETS)
AGREEMENT = Histogram("crowd_gateway_agreement", "Share of valid votes that agree with the returned label",
                      ["ensemble"], buckets=UNIT_BUCKETS)
COST = Counter("crowd_gateway_cost_usd", "Money spent on member calls", ["member"])
TOKENS = Counter("crowd_gateway_tokens", "Tokens used by member calls", ["member", "kind"])
CIRCUIT = Gauge("crowd_gateway_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
                ["member"], multiprocess_mode="max")
GROUPED_PROMPTS = Histogram("crowd_gateway_grouped_prompts", "Prompts per grouped completion call to a member "
                            "(job traffic, see gateway/upstream/grouping.py)", ["member"],
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
ESCALATIONS = Counter("crowd_gateway_escalations", "Items escalated to a stronger member", ["ensemble", "to"])
CALLS_PER_ITEM = Histogram("crowd_gateway_calls_per_item", "Member calls made for one item (hedges included)",
                           ["ensemble"], buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20))
STOPS = Counter("crowd_gateway_route_stops", "Why routing stopped asking about an item: confident, exhausted, "
                "escalated, budget or deadline", ["ensemble", "reason"])
ITEM_COST = Histogram("crowd_gateway_item_cost_usd", "Money spent on one item's member calls", ["ensemble"],
                      buckets=(1e-7, 1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1))
HEDGES = Counter("crowd_gateway_hedges", "Duplicate calls sent to a replica after a slow first call, by winner",
                 ["member", "outcome"])
BATCH_LINES = Counter("crowd_gateway_batch_lines", "Batch lines run by this process, by outcome "
                      "(ok, error, discarded: a result for a line that another worker had already completed)",
                      ["outcome"])
BATCH_IN_FLIGHT = Gauge("crowd_gateway_batch_lines_in_flight", "Batch lines running in this process",
                        multiprocess_mode="livesum")
VOTES_NOT_STORED = Counter("crowd_gateway_votes_not_stored", "Votes of answered items that the store could not "
                           "keep (the answer said stored: false)", ["ensemble"])
ADMISSION_REFUSED = Counter("crowd_gateway_admission_refused", "Requests refused at once with 429, by ensemble "
                            "('-' before the body was read) and limit: ensemble or key (items in flight), members "
                            "(their queues past the deadline), gateway (its event loop running late)",
                            ["ensemble", "limit"])
ENSEMBLE_READY = Gauge("crowd_gateway_ensemble_ready", "1 when at least quorum members of the ensemble passed "
                       "their health check at the last /readyz, else 0", ["ensemble"], multiprocess_mode="max")
MEMBER_HEALTHY = Gauge("crowd_gateway_member_healthy", "1 when the member passed its health check at the last "
                       "/readyz, else 0", ["member"], multiprocess_mode="max")
CLIENT_DISCONNECTS = Counter("crowd_gateway_client_disconnects", "Requests whose client went away before their "
                             "body arrived")
CONNECTION_TIMEOUTS = Counter("crowd_gateway_connection_timeouts", "Connections closed because a request's headers "
                              "or body did not arrive in time (gateway.connections)", ["stage"])
STORE_UP = Gauge("crowd_gateway_store_up", "1 while the store (Redis) answers, 0 during an outage "
                 "(gateway/store/health.py)", multiprocess_mode="livemin")
REVIEWS = Counter("crowd_gateway_reviews", "Answered items flagged for human review (review.below)", ["ensemble"])
VOTES = Counter("crowd_gateway_votes", "Members' valid votes on answered items, by whether they agree with the answer "
                "(outcome agree, disagree)", ["ensemble", "member", "outcome"])
GOLD_ANSWERS = Counter("crowd_gateway_gold_answers", "The crowd's answers checked against a gold label when it "
                       "arrived, by confidence bin (lower edge) and outcome (right, wrong)",
                       ["ensemble", "bin", "outcome"])
GOLD_CONFIDENCE = Counter("crowd_gateway_gold_confidence", "Sum of the confidence the crowd stated on the answers "
                          "checked against gold, by confidence bin: with gold_answers, the calibration error",
                          ["ensemble", "bin"])
GOLD_VOTES = Counter("crowd_gateway_gold_votes", "Members' votes checked against a gold label, by the probability "
                     "the member gave its label (bin; a hard vote 1.0) and outcome (right, wrong)",
                     ["ensemble", "member", "bin", "outcome"])
GOLD_VOTE_CONFIDENCE = Counter("crowd_gateway_gold_vote_confidence", "Sum of the probability members gave their "
                               "label on votes checked against gold, by bin", ["ensemble", "member", "bin"])
TENANT_SPEND = Counter("crowd_gateway_tenant_spend_usd", "Money spent on the answers of a metered tenant (one with "
                       "limits, gateway/budgets.py)", ["tenant"])
TENANT_TOKENS = Counter("crowd_gateway_tenant_tokens", "Tokens used by the answers of a metered tenant", ["tenant"])
TENANT_REFUSED = Counter("crowd_gateway_tenant_refused", "Requests of a metered tenant refused with 429, by the limit "
                         "that refused them: requests or tokens (rate_limit_exceeded), day or month "
                         "(insufficient_quota)", ["tenant", "limit"])
LIMITS_UNCHECKED = Counter("crowd_gateway_limits_unchecked", "Requests of metered tenants served without a limit "
                           "check because the store was unavailable (limits fail open)")
CACHE_LOOKUPS = Counter("crowd_gateway_cache_lookups", "Votes looked up in the response cache, by member and outcome "
                        "(hit: answered from the cache, no call made; miss: the member was asked)",
                        ["member", "outcome"])
CACHE_SAVED = Counter("crowd_gateway_cache_saved_usd", "What the votes answered from the response cache cost when "
                      "they were first asked", ["member"])
REVIEW_QUEUE = Gauge("crowd_gateway_review_queue_depth", "Items waiting for human review",
                     multiprocess_mode="max")


def exposition() -> tuple[bytes, str]:
    """The text exposition, merged across worker processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


_children: dict[tuple[object, tuple[str, ...]], object] = {}


def child(metric: Counter | Histogram | Gauge, *labels: str):  # type: ignore[no-untyped-def]
    """`metric.labels(*labels)`, cached: label values come from the config, so the set stays small,
    and the request path saves prometheus-client's locked lookup on every call."""
    key = (metric, labels)  # metrics hash by identity
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found
