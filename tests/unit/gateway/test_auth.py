"""API keys: bearer tokens checked against stored SHA-256 hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bailu.common.errors import AuthenticationFailed
from bailu.gateway.auth import KeyStore
from bailu.keys.model import HASH_PREFIX as PREFIX
from bailu.keys.model import KEY_PREFIX, hash_key, new_key

KEY = "bailu-unit-test-key"
HEX = hashlib.sha256(KEY.encode()).hexdigest()
OTHER = "bailu-another-key"


def test_hash_key_is_prefixed_sha256() -> None:
    assert hash_key(KEY) == PREFIX + HEX


def test_new_keys_are_prefixed_and_distinct() -> None:
    a, b = new_key(), new_key()
    assert a.startswith(KEY_PREFIX)
    assert a != b
    assert len(a) > len(KEY_PREFIX) + 32


def test_good_key_returns_a_loggable_id() -> None:
    key = KeyStore([hash_key(KEY)]).verify(f"Bearer {KEY}")
    assert key.id == HEX[:12]
    assert KEY not in key.id
    # A static key may do everything, without limits.
    assert key.scopes == {"generate", "feedback", "admin"}
    assert key.limits.unlimited


def test_scheme_is_case_insensitive_and_extra_spaces_are_ignored() -> None:
    store = KeyStore([hash_key(KEY)])
    assert store.verify(f"bearer {KEY}").id == HEX[:12]
    assert store.verify(f"Bearer   {KEY}  ").id == HEX[:12]


def test_unknown_key_is_refused() -> None:
    with pytest.raises(AuthenticationFailed, match="incorrect API key"):
        KeyStore([hash_key(KEY)]).verify(f"Bearer {OTHER}")


def test_hash_instead_of_key_is_refused() -> None:
    with pytest.raises(AuthenticationFailed):
        KeyStore([hash_key(KEY)]).verify(f"Bearer {hash_key(KEY)}")


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header_is_refused(header: str | None) -> None:
    with pytest.raises(AuthenticationFailed, match="missing API key"):
        KeyStore([hash_key(KEY)]).verify(header)


@pytest.mark.parametrize("header", [f"Basic {KEY}", f"Token {KEY}", KEY, "Bearer", "Bearer    "])
def test_wrong_scheme_or_no_token_is_refused(header: str) -> None:
    with pytest.raises(AuthenticationFailed, match="malformed Authorization header"):
        KeyStore([hash_key(KEY)]).verify(header)


def test_empty_store_refuses_everything() -> None:
    store = KeyStore([])
    assert len(store) == 0
    with pytest.raises(AuthenticationFailed):
        store.verify(f"Bearer {KEY}")


@pytest.mark.parametrize(
    "entry",
    [PREFIX + HEX, HEX, HEX.upper(), "SHA256:" + HEX.upper(), f"  {PREFIX}{HEX}  ", f"{PREFIX}{HEX} alice laptop"],
    ids=["prefixed", "bare", "upper", "upper-prefix", "spaces", "label"],
)
def test_hash_entries_are_normalised(entry: str) -> None:
    store = KeyStore([entry])
    assert store.verify(f"Bearer {KEY}").id == HEX[:12]


def test_same_hash_in_two_spellings_counts_once() -> None:
    assert len(KeyStore([PREFIX + HEX, HEX.upper()])) == 1


@pytest.mark.parametrize(
    "entry",
    [KEY, HEX[:-1], HEX + "0", "g" * 64, "md5:" + HEX, "sha256:" + "z" * 64, "", "   "],
    ids=["plain-key", "short", "long", "not-hex", "other-algorithm", "prefixed-not-hex", "empty", "blank"],
)
def test_invalid_hash_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ValueError, match="not a sha256 hash") as info:
        KeyStore([entry])
    # A key pasted where its hash belongs must not leak into the error (and so into logs).
    if entry.strip():
        assert entry[:8] not in str(info.value)


def test_load_reads_file_with_comments_and_labels(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(
        f"# Bailu API keys\n\n{hash_key(KEY)}  alice  # her laptop\n   # indented comment\n{hash_key(OTHER).upper()}\n"
    )
    store = KeyStore.load(keys_file, [])
    assert len(store) == 2
    store.verify(f"Bearer {KEY}")
    store.verify(f"Bearer {OTHER}")
    with pytest.raises(AuthenticationFailed):
        store.verify("Bearer bailu-third")


def test_load_merges_file_and_given_hashes(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(hash_key(KEY) + "\n")
    store = KeyStore.load(keys_file, [hash_key(OTHER)])
    assert len(store) == 2
    store.verify(f"Bearer {OTHER}")


def test_load_without_file_uses_the_given_hashes() -> None:
    store = KeyStore.load(None, [hash_key(KEY)])
    assert len(store) == 1
    store.verify(f"Bearer {KEY}")


def test_load_rejects_an_invalid_line(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"{hash_key(KEY)}\nnot-a-hash\n")
    with pytest.raises(ValueError, match="not a sha256 hash"):
        KeyStore.load(keys_file, [])


def test_load_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KeyStore.load(tmp_path / "absent", [])
