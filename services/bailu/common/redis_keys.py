"""Every Redis stream, key and consumer group name, defined once.

Services, tests, dashboards and runbooks use these names; nothing else
spells them out.
"""

from __future__ import annotations

PREFIX = "bailu"

# Append-only log of completions (retention bounded by MAXLEN ~).
COMPLETIONS_STREAM = f"{PREFIX}:completions"
# Feedback events, consumed by the collector's group; trimmed only below what the group acknowledged.
FEEDBACK_STREAM = f"{PREFIX}:feedback"
# Feedback events that can never be processed, with the reason.
DEADLETTER_STREAM = f"{PREFIX}:feedback:dead"
# The collector's consumer group on FEEDBACK_STREAM.
COLLECTOR_GROUP = "collector"


def response_key(response_id: str) -> str:
    """The completion record of one response (JSON, expires with the completion log's retention)."""
    return f"{PREFIX}:response:{response_id}"


def idempotency_key(key_id: str, idempotency: str) -> str:
    """A feedback POST's idempotency key, scoped to the API key that sent it."""
    return f"{PREFIX}:feedback:idem:{key_id}:{idempotency}"


# The collector's shared state.
SEEN_SET = f"{PREFIX}:dataset:seen"  # content hashes of every example and pair written
COUNTS_HASH = f"{PREFIX}:dataset:counts"  # examples written, by kind (sft, preference)
RATINGS_PREFIX = f"{PREFIX}:ratings"  # per prompt: the ratings seen so far, to pair higher with lower
TRIGGER_HASH = f"{PREFIX}:trainer:trigger"  # last run, runs per day, preference pairs at the last run
TRIGGER_LOCK = f"{TRIGGER_HASH}:lock"  # held by the replica that is starting a run


def intents_key(consumer: str) -> str:
    """A collector replica's write-ahead intents: batch name -> what committing that batch records."""
    return f"{PREFIX}:collector:intents:{consumer}"


def ratings_key(prompt_hash: str) -> str:
    return f"{RATINGS_PREFIX}:{prompt_hash}"


# The model registry's index (a mirror of the files on shared storage, rebuilt from them at will).
REGISTRY_EVENTS_STREAM = f"{PREFIX}:registry:events"  # every change: published, status, alias, canary weight
REGISTRY_NAMES_SET = f"{PREFIX}:registry:names"  # members "<kind>/<name>"
REGISTRY_KEY_PATTERN = f"{PREFIX}:registry:idx:*"  # every per-name index key, for a rebuild


def registry_versions_key(kind: str, name: str) -> str:
    """Hash of one model name's versions: version -> manifest JSON."""
    return f"{PREFIX}:registry:idx:versions:{kind}/{name}"


def registry_aliases_key(kind: str, name: str) -> str:
    """Hash of one model name's aliases: production, canary, canary_weight, history (JSON)."""
    return f"{PREFIX}:registry:idx:aliases:{kind}/{name}"


# API keys (`bailu.keys.store.KeyRegistry`): records are kept after revocation or expiry (an audit trail), never
# with a TTL; only the key's hash is stored, never the key.
API_KEYS_ZSET = f"{PREFIX}:apikeys"  # every key id, scored by its created_at: the listing, in creation order
API_KEY_HASHES = f"{PREFIX}:apikeys:by-hash"  # hash: key hash (sha256:...) -> key id, whatever the key's state
API_KEY_PREFIX = f"{PREFIX}:apikey:"  # followed by a key id: that key's record


def api_key_record_key(key_id: str) -> str:
    """Hash of one API key's record (`ApiKey.to_fields()`)."""
    return f"{API_KEY_PREFIX}{key_id}"


# Per-key quotas (`bailu.gateway.quotas`), shared by every gateway replica. The `{key_id}` hash tag keeps one key's
# three names in one cluster slot, as the Lua scripts that read and write them together require. Each name expires
# on its own once idle (a bucket two minutes after it is full again; the leases with the newest lease).
def quota_requests_key(key_id: str) -> str:
    """Hash of one API key's requests-per-minute bucket: `level` (requests left), `ts` (Redis time, ms)."""
    return f"{PREFIX}:quota:{{{key_id}}}:requests"


def quota_tokens_key(key_id: str) -> str:
    """Hash of one API key's tokens-per-minute bucket: `level` (tokens left; negative while in debt), `ts`."""
    return f"{PREFIX}:quota:{{{key_id}}}:tokens"


def quota_leases_key(key_id: str) -> str:
    """Sorted set of one API key's completions in progress: lease id scored by its expiry (Redis time, ms)."""
    return f"{PREFIX}:quota:{{{key_id}}}:leases"
