"""API keys: clients send `Authorization: Bearer <key>`; only SHA-256 hashes of keys are stored.

python -m bailu.gateway.auth new    # prints a new key and the line to put in the keys file
python -m bailu.gateway.auth hash KEY
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
from collections.abc import Iterable
from pathlib import Path

from bailu.common.errors import AuthenticationFailed

PREFIX = "sha256:"
KEY_PREFIX = "bailu-"


def hash_key(key: str) -> str:
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _normalise(entry: str) -> str:
    fields = entry.split()
    digest = fields[0].lower().removeprefix(PREFIX) if fields else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        # Never echo the entry: it may be a key pasted where its hash belongs.
        raise ValueError("an API key entry is not a sha256 hash (expected 'sha256:<64 hex digits>')")
    return PREFIX + digest


class KeyStore:
    """Verifies bearer tokens against a set of key hashes."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self._hashes = frozenset(_normalise(h) for h in hashes)

    @classmethod
    def load(cls, file: Path | None, hashes: Iterable[str]) -> KeyStore:
        """Hashes from the file (one per line, `#` comments) plus the given ones."""
        entries = list(hashes)
        if file is not None:
            for line in file.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    entries.append(line)
        return cls(entries)

    def __len__(self) -> int:
        return len(self._hashes)

    def verify(self, authorization: str | None) -> str:
        """The key's id (a hash prefix, safe to log) for a valid `Authorization` header; else raise."""
        if not authorization:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("malformed Authorization header: expected 'Bearer <key>'")
        digest = hash_key(token)
        # A set lookup on the hash is safe: timing can only reveal bits of a SHA-256 digest.
        if digest not in self._hashes:
            raise AuthenticationFailed("incorrect API key provided")
        return digest[len(PREFIX) : len(PREFIX) + 12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("new", help="generate a key; print it and its hash line")
    hash_cmd = sub.add_parser("hash", help="print the hash line of a key")
    hash_cmd.add_argument("key")
    args = parser.parse_args()
    if args.cmd == "new":
        key = new_key()
        print(f"key:  {key}\nhash: {hash_key(key)}")
    else:
        print(hash_key(args.key))


if __name__ == "__main__":
    main()
