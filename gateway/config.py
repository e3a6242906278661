"""The YAML config model: members, ensembles, tasks and gateway settings, validated with pydantic.

An invalid file stops startup with a message that names the offending field, so a typo in a
config never becomes a runtime surprise. Secrets are never in the file: only the names of the
environment variables that hold them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ensembles.escalation import Escalation, Review
from ensembles.labels import check_label_set
from gateway.asking.prompts import Template, Variant
from routers import Knobs, router_class

CONFIG_ENV = "CROWD_GATEWAY_CONFIG"


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt option must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(Strict):
    input_usd_per_mtok: float = Field(0.0, ge=0)
    output_usd_per_mtok: float = Field(0.0, ge=0)


class Task(Template):
    """A named annotation task: its label set, its prompt (instructions, few-shot examples, style) and
    optional prompt `variants` that members can name. The task owns the prompt: a member that names a
    variant the task lacks gets the task's own wording."""

    name: str
    labels: list[str]
    variants: dict[str, Variant] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        return check_label_set(labels)

    @model_validator(mode="after")
    def _descriptions_name_labels(self) -> Task:
        known = {label.casefold() for label in self.labels}
        if unknown := [label for label in self.descriptions if label.casefold() not in known]:
            raise ValueError(f"descriptions name labels the task does not have: {unknown}")
        return self


class Member(Strict):
    name: str
    base_url: str
    model: str
    dialect: Literal["vllm", "llamacpp", "openai", "litellm"] = "vllm"
    timeout_s: float = Field(30.0, gt=0)
    max_stream_s: float = Field(600.0, gt=0)
    """A passthrough stream from this member is cut after this long in all (an error event ends it for the client);
    `timeout_s` bounds each wait for its next bytes."""
    max_concurrency: int = Field(64, ge=1)
    retries: int = Field(2, ge=0, le=10)
    price: Price = Price()
    api_key_env: str | None = None
    template: Template | None = None
    """The prompt for requests that name no task (an ad-hoc label set); a named task's prompt comes first."""
    prompt_style: Literal["chat", "completion"] | None = None
    """How this worker is prompted for a task (default: the task's style)."""
    variant: str | None = None
    """Which of a task's prompt variants this worker uses (default: the task's own wording)."""
    logprobs: bool = True
    """Ask for token log-probabilities (soft votes); llama.cpp's server gets several times slower with them."""
    decoding: Literal["auto", "one_pass", "constrained"] = "auto"
    """one_pass: one forward pass (max_tokens 1 with top log-probabilities) when the most likely first token
    names exactly one label, else a constrained call; constrained: the server decodes a whole label.
    auto: one_pass for vllm and llamacpp members with log-probabilities on completion prompts."""
    health_path: str = "/health"
    group: str | None = None
    """Members sharing a group are interchangeable replicas of one worker (same model and template):
    load-aware routing asks one of them, hedging duplicates a slow call to another."""

    max_reply_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """A reply past this is that member's failed vote, read no further."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError("must not carry credentials: put the key in the variable api_key_env names")
        return url.rstrip("/")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def replica_group(self) -> str:
        return self.group or self.name


class Ensemble(Strict):
    name: str
    members: list[str] = Field(min_length=1)
    aggregator: str = "majority"
    router: str = "fanout"
    routing: Knobs = Knobs()
    """Validated as the knob model of `router` (each strategy owns its knobs, see routers/)."""
    quorum: int = Field(1, ge=1)
    deadline_s: float = Field(30.0, gt=0)
    escalation: Escalation | None = None
    review: Review | None = None

    @model_validator(mode="before")
    @classmethod
    def _router_knobs(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        router = data.get("router", "fanout")
        try:
            knobs = router_class(router).knobs if isinstance(router, str) else Knobs
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        routing = data.get("routing")
        if routing is None or isinstance(routing, dict):
            try:
                return {**data, "routing": knobs.model_validate(routing or {})}
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"routing.{where}: {err['msg']} (router {router!r})") from None
        return data

    @model_validator(mode="after")
    def _quorum_fits(self) -> Ensemble:
        if self.quorum > len(self.members):
            raise ValueError(f"quorum {self.quorum} exceeds the {len(self.members)} members")
        return self


class Breaker(Strict):
    failure_threshold: int = Field(5, ge=1)
    reset_after_s: float = Field(30.0, gt=0)


class Limits(Strict):
    """A tenant's rate limits and budgets (gateway/budgets.py); a limit left out is not enforced. A tenant with a
    `limits` block, even an empty one, is metered: its requests, tokens and spend are counted in the store."""

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    """Prompt plus completion tokens of every member call a request makes (an ensemble's fan-out included)."""
    usd_per_day: float | None = Field(None, gt=0)
    """Spend per calendar day (UTC): once reached, requests are refused with 429 insufficient_quota."""
    usd_per_month: float | None = Field(None, gt=0)
    """Spend per calendar month (UTC)."""


class Tenant(Strict):
    """A group of API keys that share stored items, gold, reviews, files and batches."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    keys_env: str
    """Environment variable holding the group's keys, comma-separated."""
    limits: Limits | None = None
    """The group's own limits, in place of `gateway.limits`."""


class Connections(Strict):
    """How long a client connection may idle, or take to send a request (seconds; gateway/server/connections.py)."""

    keep_alive_s: float = Field(65.0, gt=0)
    """An idle kept-alive connection is closed this long after its last answer (above the 60 s idle timeout of
    common load balancers, so they close first)."""
    header_timeout_s: float = Field(10.0, gt=0)
    """A request's headers must be complete this long after the connection opened (or after the request's first
    byte, on a kept-alive connection); else 408 and close."""
    body_timeout_s: float = Field(60.0, gt=0)
    """A request's body must be complete this long after its headers (in total, however it trickles); else 408
    and close. Raise it for large file uploads over slow links."""


class GatewaySettings(Strict):
    api_keys_env: str | None = "CROWD_GATEWAY_API_KEYS"
    """Keys that are each their own tenant."""
    tenants: list[Tenant] = Field(default_factory=list)
    limits: Limits | None = None
    """The limits of every tenant without its own: each key of `api_keys_env`, each tenant that sets none, and
    the one tenant `default` when no keys are configured."""
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_labels: int = Field(1000, ge=2)
    """Most labels a request's label set may have (400 beyond)."""
    max_label_chars: int = Field(200, ge=1)
    """Longest label a request may send (400 beyond)."""
    max_items_in_flight: int = Field(512, ge=1)
    """Items an ensemble runs at once; beyond it, requests are refused at once with 429 and Retry-After."""
    max_items_in_flight_per_key: int = Field(256, ge=1)
    """Items one tenant runs at once, over all ensembles."""
    max_loop_lag_ms: float = Field(50.0, gt=0)
    """How late the event loop may run: completion requests in progress are limited to what keeps it within
    this, and the excess is refused at once with 429 (gateway/server/loop_gate.py; `crowd-gateway serve` only)."""
    breaker: Breaker = Breaker()
    connections: Connections = Connections()
    shutdown_timeout_s: float = Field(20.0, gt=0)
    """How long a stop (SIGTERM) may take, below Kubernetes' 30 s grace: requests in flight get half of it, then
    each stop step (background work, batch leases, connections) a share of the rest (gateway/server/lifecycle.py)."""

    def api_keys(self) -> dict[str, str]:
        """Every accepted key -> its tenant; empty when authentication is off."""
        from gateway.tenancy import key_tenant

        keys = {k: key_tenant(k) for k in _env_list(self.api_keys_env)}
        for tenant in self.tenants:
            keys.update((k, tenant.name) for k in _env_list(tenant.keys_env))
        return keys

    def tenant_limits(self, keys: dict[str, str]) -> dict[str, Limits]:
        """The metered tenants among those `keys` (from `api_keys`) name, with their limits."""
        from gateway.tenancy import DEFAULT

        if not keys:
            return {DEFAULT: self.limits} if self.limits is not None else {}
        own = {t.name: t.limits for t in self.tenants}
        found = {tenant: own.get(tenant) or self.limits for tenant in set(keys.values())}
        return {tenant: limits for tenant, limits in found.items() if limits is not None}


def _env_list(name: str | None) -> list[str]:
    raw = os.environ.get(name, "") if name else ""
    return [k.strip() for k in raw.split(",") if k.strip()]


class StoreSettings(Strict):
    backend: Literal["memory", "redis"] = "memory"
    redis_url_env: str = "CROWD_GATEWAY_REDIS_URL"
    retention_days: float = Field(30.0, gt=0)
    max_connections: int = Field(200, ge=1)
    """Redis connections per gateway process; beyond them a write waits for a free one."""
    pool_timeout_s: float = Field(10.0, gt=0)
    """How long a write waits for a free connection before the answer says `stored: false`."""
    connect_timeout_s: float = Field(1.0, gt=0)
    """How long connecting to Redis may take before the call fails (the store counts as unavailable)."""
    socket_timeout_s: float = Field(1.0, gt=0)
    """How long a Redis call may wait for its answer: a stalled Redis fails calls in this time instead of hanging
    the store routes (503) and the completions (`stored: false`)."""


class Grouping(Strict):
    """How the one-pass prompts of job traffic (batch lines, `service_tier: flex`) share calls to vLLM members."""

    max_prompts: int = Field(32, ge=1, le=1024)
    """Prompts per grouped `/v1/completions` call to one member; 1 sends each prompt alone."""
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    """How long the first prompt of a group waits for others before the call goes out."""


class BatchSettings(Strict):
    """The Batch API's worker pool: lines in flight per replica, input limits, lease length, grouping."""

    concurrency: int = Field(32, ge=1, le=4096)
    max_file_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    max_lines: int = Field(50_000, ge=1)
    lease_s: float = Field(30.0, gt=0)
    poll_s: float = Field(0.5, gt=0)
    grouping: Grouping = Grouping()


class Refit(Strict):
    """When the background worker refits member reliability from stored votes."""

    every_items: int = Field(50, ge=1)
    every_s: float = Field(60.0, gt=0)
    min_items: int = Field(20, ge=1)
    max_items: int = Field(10_000, ge=100)
    """Items a refit reads besides every gold item and every item people labelled: half the newest, half drawn at
    random from the older ones (gateway/store/sampling.py), so a refit costs the same at 10,000 items and at a
    million."""
    min_gold_for_calibration: int = Field(20, ge=2)
    debias: bool = True
    """Divide each member's label bias out of its soft votes (ensembles/debias.py); off for heavily skewed labels."""
    metric: Literal["accuracy", "balanced_accuracy", "macro_f1"] = "accuracy"
    """What a good label is to you: `auto` chooses by it on held-out gold, `stacking` weighs classes for it."""
    poll_s: float = Field(1.0, gt=0)


class CacheSettings(Strict):
    """The exact response cache of member votes (gateway/response_cache.py)."""

    enabled: bool = True
    """Off: every vote is asked of its member (a request turns it off for itself with `cache: false`)."""
    ttl_s: float = Field(7 * 86400, gt=0)
    """How long a stored vote answers again (Redis: the key's EXPIRE)."""
    max_entries: int = Field(100_000, ge=1)
    """Votes the in-memory store keeps (the least recently used go first); Redis is bounded by its own memory."""


class TracingSettings(Strict):
    """OpenTelemetry traces (gateway/tracing.py; the `otel` extra). The exporter reads the standard OTEL_*
    environment variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...)."""

    enabled: bool | None = None
    """None: on when $OTEL_EXPORTER_OTLP_ENDPOINT or $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (unless
    $OTEL_SDK_DISABLED is true); true or false decides whatever the environment says."""


class Config(Strict):
    gateway: GatewaySettings = GatewaySettings()
    store: StoreSettings = StoreSettings()
    cache: CacheSettings = CacheSettings()
    tracing: TracingSettings = TracingSettings()
    batches: BatchSettings = BatchSettings()
    refit: Refit = Refit()
    pool: dict[str, Any] | None = None
    """The local pool of real models that `crowd-gateway pool` starts (validated by that tool, not here)."""
    members: list[Member] = Field(min_length=1)
    ensembles: list[Ensemble] = Field(default_factory=list)
    tasks: list[Task] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references_resolve(self) -> Config:
        members = _unique("members", [m.name for m in self.members])
        ensembles = _unique("ensembles", [e.name for e in self.ensembles])
        _unique("tasks", [t.name for t in self.tasks])
        if clash := members & ensembles:
            raise ValueError(f"names used for both a member and an ensemble: {sorted(clash)}")
        for ens in self.ensembles:
            for name in ens.members:
                if name not in members:
                    raise ValueError(f"ensemble {ens.name!r} names unknown member {name!r}")
            if ens.escalation and ens.escalation.to not in members:
                raise ValueError(f"ensemble {ens.name!r} escalates to unknown member {ens.escalation.to!r}")
        return self

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def task(self, name: str) -> Task | None:
        return next((t for t in self.tasks if t.name == name), None)

    def fit_options(self) -> dict[str, Any]:
        """The refit's keyword options (ensembles/refit.py) this config sets: the background refit, `tune` and the
        benches fit alike. Members serving one model are one look-alike group."""
        return {"min_gold": self.refit.min_gold_for_calibration, "debiased": self.refit.debias,
                "groups": {m.name: m.model for m in self.members}, "metric": self.refit.metric}


class ConfigError(Exception):
    """Raised with a one-line, field-naming message when a config cannot be used."""


def _unique(kind: str, names: list[str]) -> set[str]:
    seen = set(names)
    if len(seen) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate {kind} names: {dupes}")
    return seen


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a YAML config; the path comes from the argument or CROWD_GATEWAY_CONFIG."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"no config: pass --config FILE or set {CONFIG_ENV}")
    try:
        with Path(path).open(encoding="utf-8") as fh:  # a stream, so YAML errors name the file
            raw = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        where = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ConfigError(f"config {path} is not valid YAML: {where}") from None
    return parse_config(raw, source=str(path))


def parse_config(raw: object, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid config {source}: {problems}") from None
