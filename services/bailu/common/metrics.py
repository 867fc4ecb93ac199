"""Every Prometheus metric Bailu exports, defined once.

Dashboards, alerts, autoscaling triggers and tests refer to these names.
Each service creates its metrics on its own Prometheus registry, called `metrics_registry` (no global state).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Buckets for latencies from a millisecond to a minute.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# gateway
GATEWAY_REQUESTS = "bailu_gateway_requests_total"
GATEWAY_REQUEST_DURATION = "bailu_gateway_request_duration_seconds"
GATEWAY_TTFT = "bailu_gateway_time_to_first_token_seconds"
GATEWAY_TOKENS = "bailu_gateway_completion_tokens_total"
GATEWAY_INFLIGHT = "bailu_gateway_inflight_requests"
GATEWAY_RETRIES = "bailu_gateway_worker_retries_total"
GATEWAY_CLIENT_WRITE_TIMEOUTS = "bailu_gateway_client_write_timeouts_total"
GATEWAY_WORKERS_READY = "bailu_gateway_workers_ready"
GATEWAY_COMPLETION_LOG_WRITTEN = "bailu_gateway_completion_log_written_total"
GATEWAY_COMPLETION_LOG_DROPPED = "bailu_gateway_completion_log_dropped_total"
GATEWAY_FEEDBACK = "bailu_gateway_feedback_total"
GATEWAY_MODEL_REQUESTS = "bailu_gateway_model_requests_total"
GATEWAY_VERSION_FALLBACKS = "bailu_gateway_version_fallbacks_total"
GATEWAY_REGISTRY_REFRESHES = "bailu_gateway_registry_refreshes_total"
GATEWAY_REGISTRY_LAST_REFRESH = "bailu_gateway_registry_last_refresh_timestamp_seconds"
GATEWAY_SHED = "bailu_gateway_shed_total"
GATEWAY_AUTH_REJECTIONS = "bailu_gateway_auth_rejections_total"
GATEWAY_QUOTA_REJECTIONS = "bailu_gateway_quota_rejections_total"
GATEWAY_QUOTA_FALLBACKS = "bailu_gateway_quota_fallbacks_total"
GATEWAY_QUOTA_ADMITTED = "bailu_gateway_quota_admitted_total"
GATEWAY_QUOTA_TOKENS = "bailu_gateway_quota_tokens_total"

# worker
WORKER_REQUESTS = "bailu_worker_requests_total"
WORKER_QUEUED = "bailu_worker_queued_requests"
WORKER_RUNNING = "bailu_worker_running_requests"
WORKER_CAPACITY = "bailu_worker_capacity"
WORKER_READY = "bailu_worker_ready"
WORKER_TTFT = "bailu_worker_time_to_first_token_seconds"
WORKER_TOKENS = "bailu_worker_generated_tokens_total"
WORKER_ADAPTERS_LOADED = "bailu_worker_adapters_loaded"
WORKER_ADAPTER_LOADS = "bailu_worker_adapter_loads_total"
WORKER_ADAPTER_UNLOADS = "bailu_worker_adapter_unloads_total"
WORKER_REGISTRY_LAST_RECONCILE = "bailu_worker_registry_last_reconcile_timestamp_seconds"
WORKER_REGISTRY_RECONCILES = "bailu_worker_registry_reconciles_total"
WORKER_REGISTRY_EVENTS_CONNECTED = "bailu_worker_registry_events_connected"
WORKER_QUEUED_BATCH = "bailu_worker_queued_batch_requests"
WORKER_EVICTED = "bailu_worker_evicted_total"


class GatewayMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        self.requests = Counter(
            GATEWAY_REQUESTS,
            "HTTP API requests by route and status code",
            ["route", "status"],
            registry=metrics_registry,
        )
        self.request_duration = Histogram(
            GATEWAY_REQUEST_DURATION,
            "Time from request to the end of the response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=metrics_registry,
        )
        self.ttft = Histogram(
            GATEWAY_TTFT,
            "Time from request to the first generated token, as seen by the gateway",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=metrics_registry,
        )
        self.tokens = Counter(GATEWAY_TOKENS, "Completion tokens sent to clients", ["model"], registry=metrics_registry)
        self.inflight = Gauge(GATEWAY_INFLIGHT, "Completions in progress", registry=metrics_registry)
        self.retries = Counter(
            GATEWAY_RETRIES, "Requests retried on another worker before the first token", registry=metrics_registry
        )
        self.client_write_timeouts = Counter(
            GATEWAY_CLIENT_WRITE_TIMEOUTS,
            "Streaming responses abandoned because the client stopped reading (a write waited longer than "
            "client_write_timeout_s); their worker streams were cancelled",
            registry=metrics_registry,
        )
        self.workers_ready = Gauge(GATEWAY_WORKERS_READY, "Workers reporting ready", registry=metrics_registry)
        self.completion_log_written = Counter(
            GATEWAY_COMPLETION_LOG_WRITTEN, "Completion records written to Redis", registry=metrics_registry
        )
        self.completion_log_dropped = Counter(
            GATEWAY_COMPLETION_LOG_DROPPED,
            "Completion records not written, by reason (queue_full, redis_error)",
            ["reason"],
            registry=metrics_registry,
        )
        self.feedback = Counter(
            GATEWAY_FEEDBACK,
            "Feedback posts by kind and outcome (accepted, duplicate, or the error name)",
            ["kind", "outcome"],
            registry=metrics_registry,
        )
        self.model_requests = Counter(
            GATEWAY_MODEL_REQUESTS,
            "Completions by the model name the client asked for and the served name it resolved to "
            "(a registry adapter name resolves to one of its versions, `<name>@<version>`)",
            ["requested", "served"],
            registry=metrics_registry,
        )
        self.version_fallbacks = Counter(
            GATEWAY_VERSION_FALLBACKS,
            "Requests to a registry adapter name whose chosen alias (production or canary) no ready worker "
            "served, sent to the other aliased version instead",
            ["model", "alias"],
            registry=metrics_registry,
        )
        self.registry_refreshes = Counter(
            GATEWAY_REGISTRY_REFRESHES,
            "Reads of the registry index, by trigger (start, connect, event, poll) and outcome (ok, error)",
            ["trigger", "outcome"],
            registry=metrics_registry,
        )
        self.registry_last_refresh = Gauge(
            GATEWAY_REGISTRY_LAST_REFRESH,
            "Unix time the gateway's view of the registry aliases was last read successfully",
            registry=metrics_registry,
        )
        self.shed = Counter(
            GATEWAY_SHED,
            "Requests refused at once by admission control, by priority (interactive, batch) and reason "
            "(deadline_unmeetable: no worker could start it before its first-token deadline; batch_shed: every "
            "worker's queue held its batch share)",
            ["priority", "reason"],
            registry=metrics_registry,
        )
        self.auth_rejections = Counter(
            GATEWAY_AUTH_REJECTIONS,
            "Requests refused by the API-key check, by reason (missing, malformed, unknown, revoked, expired, scope, "
            "priority, store_unavailable)",
            ["reason"],
            registry=metrics_registry,
        )
        self.quota_rejections = Counter(
            GATEWAY_QUOTA_REJECTIONS,
            "Requests refused by a per-key quota, by the limit reached (requests, tokens, concurrency)",
            ["limit"],
            registry=metrics_registry,
        )
        self.quota_admitted = Counter(
            GATEWAY_QUOTA_ADMITTED,
            "Requests of API keys with quotas admitted, by the key's priority class (with rejections: the quotas' use)",
            ["priority"],
            registry=metrics_registry,
        )
        self.quota_tokens = Counter(
            GATEWAY_QUOTA_TOKENS,
            "Tokens (prompt + completion) charged to API keys with a tokens-per-minute quota, by priority class",
            ["priority"],
            registry=metrics_registry,
        )
        self.quota_fallbacks = Counter(
            GATEWAY_QUOTA_FALLBACKS,
            "Quota operations not done in Redis because it did not answer, by operation: admit (decided by this "
            "replica's local limits), settle (of a local admission, settled locally; or one Redis did not answer, "
            "whose lease then expires)",
            ["op"],
            registry=metrics_registry,
        )


class WorkerMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        self.requests = Counter(
            WORKER_REQUESTS,
            "Generate calls by outcome (ok or the error name)",
            ["outcome"],
            registry=metrics_registry,
        )
        self.queued = Gauge(WORKER_QUEUED, "Requests waiting for an engine slot", registry=metrics_registry)
        self.running = Gauge(WORKER_RUNNING, "Requests being generated", registry=metrics_registry)
        self.capacity = Gauge(WORKER_CAPACITY, "Requests the engine runs at once", registry=metrics_registry)
        self.ready = Gauge(WORKER_READY, "1 once the model is loaded and warmed up", registry=metrics_registry)
        self.ttft = Histogram(
            WORKER_TTFT,
            "Time from receiving a request to its first token, queue wait included",
            buckets=LATENCY_BUCKETS,
            registry=metrics_registry,
        )
        self.tokens = Counter(WORKER_TOKENS, "Tokens generated", registry=metrics_registry)
        self.adapters_loaded = Gauge(
            WORKER_ADAPTERS_LOADED, "LoRA adapters loaded (static and registry versions)", registry=metrics_registry
        )
        self.adapter_loads = Counter(
            WORKER_ADAPTER_LOADS,
            "Registry adapter versions loaded by the registry follower, by outcome (ok or the error name)",
            ["outcome"],
            registry=metrics_registry,
        )
        self.adapter_unloads = Counter(
            WORKER_ADAPTER_UNLOADS,
            "Registry adapter versions unloaded after they left the aliases, by outcome (ok or the error name)",
            ["outcome"],
            registry=metrics_registry,
        )
        self.registry_reconciles = Counter(
            WORKER_REGISTRY_RECONCILES,
            "Comparisons of the loaded adapters with the registry, by trigger (start, connect, event, poll) and "
            "outcome (ok: every wanted version is loaded; partial: some failed to load; error: registry unreadable)",
            ["trigger", "outcome"],
            registry=metrics_registry,
        )
        self.registry_last_reconcile = Gauge(
            WORKER_REGISTRY_LAST_RECONCILE,
            "Unix time the registry follower last read the registry files successfully",
            registry=metrics_registry,
        )
        self.registry_events_connected = Gauge(
            WORKER_REGISTRY_EVENTS_CONNECTED,
            "1 while the registry follower is connected to the registry's change-event stream in Redis",
            registry=metrics_registry,
        )
        self.queued_batch = Gauge(
            WORKER_QUEUED_BATCH,
            "Batch requests waiting for an engine slot (of bailu_worker_queued_requests; interactive ones go first)",
            registry=metrics_registry,
        )
        self.evicted = Counter(
            WORKER_EVICTED,
            "Queued requests evicted to make room for a request of a higher priority class, by the evicted "
            "request's priority (refused as overloaded, retryable)",
            ["priority"],
            registry=metrics_registry,
        )


# feedback collector
COLLECTOR_EVENTS = "bailu_collector_events_total"
COLLECTOR_EXAMPLES = "bailu_collector_examples_written_total"
COLLECTOR_REJECTED = "bailu_collector_examples_rejected_total"
COLLECTOR_DEADLETTERED = "bailu_collector_deadlettered_total"
COLLECTOR_RECLAIMED = "bailu_collector_reclaimed_total"
COLLECTOR_PENDING = "bailu_collector_pending_events"
COLLECTOR_LAG = "bailu_collector_lag_events"
COLLECTOR_BATCH_SECONDS = "bailu_collector_batch_duration_seconds"
COLLECTOR_READY = "bailu_collector_ready"
TRIGGER_DECISIONS = "bailu_collector_trigger_decisions_total"
TRIGGER_RUNS = "bailu_collector_trigger_runs_total"
TRIGGER_NEW_PAIRS = "bailu_collector_trigger_new_pairs"
TRIGGER_LAST_RUN = "bailu_collector_trigger_last_run_timestamp_seconds"


class CollectorMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        self.events = Counter(
            COLLECTOR_EVENTS,
            "Feedback events consumed, by outcome (committed, deadlettered)",
            ["outcome"],
            registry=metrics_registry,
        )
        self.examples = Counter(
            COLLECTOR_EXAMPLES,
            "Examples written to dataset shards, by kind (sft, preference)",
            ["kind"],
            registry=metrics_registry,
        )
        self.rejected = Counter(
            COLLECTOR_REJECTED,
            "Examples not written, by reason (quality filters, duplicate)",
            ["reason"],
            registry=metrics_registry,
        )
        self.deadlettered = Counter(
            COLLECTOR_DEADLETTERED,
            "Events sent to the dead-letter stream, by reason",
            ["reason"],
            registry=metrics_registry,
        )
        self.reclaimed = Counter(
            COLLECTOR_RECLAIMED, "Events reclaimed from consumers that stopped answering", registry=metrics_registry
        )
        self.pending = Gauge(COLLECTOR_PENDING, "Events delivered but not yet acknowledged", registry=metrics_registry)
        self.lag = Gauge(
            COLLECTOR_LAG, "Events in the stream not yet delivered to the group", registry=metrics_registry
        )
        self.batch_seconds = Histogram(
            COLLECTOR_BATCH_SECONDS,
            "Time to process and commit one batch",
            buckets=LATENCY_BUCKETS,
            registry=metrics_registry,
        )
        self.ready = Gauge(
            COLLECTOR_READY, "1 while connected to Redis with the consumer group in place", registry=metrics_registry
        )


class TriggerMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            TRIGGER_DECISIONS,
            "Retraining policy evaluations by decision (due, not_enough_pairs, cooling_down, daily_cap, peak_window)",
            ["decision"],
            registry=metrics_registry,
        )
        self.runs = Counter(
            TRIGGER_RUNS,
            "Training runs by outcome (started, failed: the runner could not start it)",
            ["outcome"],
            registry=metrics_registry,
        )
        self.new_pairs = Gauge(
            TRIGGER_NEW_PAIRS, "Preference pairs written since the last run", registry=metrics_registry
        )
        self.last_run = Gauge(TRIGGER_LAST_RUN, "Unix time the last training run started", registry=metrics_registry)


# worker: engine servers (vllm, sglang, lmdeploy, swift), labelled engine="<kind>". Exported by
# bailu.worker.engines.server.engine_metrics.EngineMetricsCollector, read at scrape time; the load values are the
# engine's own /metrics, normalised, so dashboards never depend on the engine.
WORKER_ENGINE_UP = "bailu_worker_engine_up"
WORKER_ENGINE_RESTARTS = "bailu_worker_engine_restarts_total"
WORKER_ENGINE_SCRAPE_ERRORS = "bailu_worker_engine_metrics_scrape_errors_total"
WORKER_ENGINE_QUEUED = "bailu_worker_engine_queued_requests"
WORKER_ENGINE_RUNNING = "bailu_worker_engine_running_requests"
WORKER_ENGINE_CACHE_USAGE = "bailu_worker_engine_cache_usage_ratio"
WORKER_ENGINE_TTFT = "bailu_worker_engine_time_to_first_token_seconds"
