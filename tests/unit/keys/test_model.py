"""The API-key record: parsing of the CLI's values, validation, states, and the Redis-hash round trip."""

from __future__ import annotations

import hashlib
import math

import pytest

from bailu.keys.model import (
    ACTIVE,
    ADMIN,
    BATCH,
    DEFAULT_SCOPES,
    EXPIRED,
    FEEDBACK,
    GENERATE,
    HASH_PREFIX,
    ID_PREFIX,
    INTERACTIVE,
    KEY_PREFIX,
    REVOKED,
    SCOPES,
    ApiKey,
    Limits,
    hash_id,
    hash_key,
    new_key,
    new_key_id,
    parse_duration,
    parse_scopes,
)

DIGEST = hash_key("bailu-a-key")
PUBLIC_FIELDS = {
    "id",
    "name",
    "scopes",
    "rpm",
    "tpm",
    "concurrency",
    "priority",
    "created_at",
    "expires_at",
    "revoked_at",
    "state",
}


def record(**changes: object) -> ApiKey:
    fields: dict[str, object] = {"id": "key_0123456789abcdef", "name": "alice", "hash": DIGEST, **changes}
    return ApiKey(**fields)  # type: ignore[arg-type]


def test_hash_key_is_the_prefixed_sha256_of_the_key() -> None:
    assert hash_key("bailu-a-key") == HASH_PREFIX + hashlib.sha256(b"bailu-a-key").hexdigest()


def test_new_keys_and_ids_are_prefixed_random_and_distinct() -> None:
    keys = {new_key() for _ in range(50)}
    ids = {new_key_id() for _ in range(50)}
    assert len(keys) == 50
    assert len(ids) == 50
    assert all(k.startswith(KEY_PREFIX) and len(k) >= len(KEY_PREFIX) + 43 for k in keys)  # 32 bytes, base64
    assert all(i.startswith(ID_PREFIX) and len(i) == len(ID_PREFIX) + 16 for i in ids)


def test_hash_id_is_a_prefix_of_the_hex_digest() -> None:
    assert hash_id(DIGEST) == DIGEST.removeprefix(HASH_PREFIX)[:12]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("90m", 5400), ("12h", 43200), ("30d", 30 * 86400), ("2w", 14 * 86400), (" 1d ", 86400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["3x", "0d", "-1d", "1.5h", "d", "", "30", "1 d", "never"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "scopes"),
    [
        ("generate", {GENERATE}),
        ("generate,feedback", {GENERATE, FEEDBACK}),
        (" admin , generate ,", {ADMIN, GENERATE}),
        ("feedback,feedback", {FEEDBACK}),
    ],
)
def test_parse_scopes(text: str, scopes: set[str]) -> None:
    assert parse_scopes(text) == frozenset(scopes)


@pytest.mark.parametrize("text", ["bogus", "generate,bogus", "", " , ", "Generate"])
def test_parse_scopes_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid scopes"):
        parse_scopes(text)


@pytest.mark.parametrize("value", [0, -1, 1.5, "10"])
def test_limits_are_positive_integers_or_unset(value: object) -> None:
    with pytest.raises(ValueError, match="rpm must be a positive integer"):
        Limits(rpm=value)  # type: ignore[arg-type]


def test_unlimited_only_without_any_limit() -> None:
    assert Limits().unlimited
    assert not Limits(concurrency=1).unlimited


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "  "}, "needs a name"),
        ({"scopes": frozenset({"bogus"})}, "unknown scopes bogus"),
        ({"priority": "urgent"}, "invalid priority"),
    ],
)
def test_a_record_is_validated(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record(**changes)


def test_defaults() -> None:
    key = record()
    assert key.scopes == DEFAULT_SCOPES == frozenset({GENERATE, FEEDBACK})
    assert key.limits.unlimited
    assert key.priority == INTERACTIVE
    assert key.allows(GENERATE)
    assert not key.allows(ADMIN)


def test_state_at_a_time() -> None:
    assert record(expires_at=100.0).state(99.9) == ACTIVE
    assert record(expires_at=100.0).state(100.0) == EXPIRED
    assert record().state(math.inf) == ACTIVE
    # Revocation wins over expiry, and holds from the moment it is recorded.
    assert record(expires_at=100.0, revoked_at=50.0).state(200.0) == REVOKED


def test_a_static_key_has_every_scope_and_no_limits() -> None:
    key = ApiKey.static(DIGEST)
    assert key.scopes == frozenset(SCOPES)
    assert key.limits.unlimited
    assert key.id == hash_id(DIGEST)


@pytest.mark.parametrize(
    "key",
    [
        record(),
        record(
            scopes=frozenset({ADMIN}),
            limits=Limits(rpm=60, tpm=100_000, concurrency=4),
            priority=BATCH,
            created_at=1_700_000_000.123456,
            expires_at=1_702_592_000.5,
            revoked_at=1_701_000_000.25,
        ),
        record(limits=Limits(tpm=1)),
    ],
    ids=["defaults", "everything-set", "one-limit"],
)
def test_fields_round_trip(key: ApiKey) -> None:
    fields = key.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert ApiKey.from_fields(fields) == key


def test_unset_fields_are_empty_strings() -> None:
    fields = record().to_fields()
    assert fields["rpm"] == fields["tpm"] == fields["concurrency"] == ""
    assert fields["expires_at"] == fields["revoked_at"] == ""


def test_from_fields_names_a_missing_field() -> None:
    fields = record().to_fields()
    del fields["hash"]
    with pytest.raises(ValueError, match="lacks its 'hash' field"):
        ApiKey.from_fields(fields)


def test_with_limits_changes_only_what_is_given() -> None:
    key = record(limits=Limits(rpm=10, tpm=20, concurrency=3))
    changed = key.with_limits(tpm=None, priority=BATCH)
    assert changed.limits == Limits(rpm=10, tpm=None, concurrency=3)
    assert changed.priority == BATCH
    assert (changed.name, changed.scopes, changed.hash) == (key.name, key.scopes, key.hash)


def test_public_has_stable_fields_and_never_the_hash() -> None:
    key = record(limits=Limits(rpm=5), expires_at=10.0, created_at=1.0)
    public = key.public(now=20.0)
    assert set(public) == PUBLIC_FIELDS
    assert DIGEST not in public.values()
    assert public["scopes"] == sorted(DEFAULT_SCOPES)
    assert (public["rpm"], public["tpm"], public["state"]) == (5, None, EXPIRED)
