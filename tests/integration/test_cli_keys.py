"""`bailu keys ...` on a real redis-server: the key printed once and never stored, the JSON contract, partial
updates, revocation, and the exit codes (2 for a wrong command line, 1 for an unknown id or no Redis)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from bailu.cli.main import main
from bailu.common import redis_keys
from bailu.keys.model import hash_key
from bailu.keys.store import KeyRegistry
from tests.conftest import RedisServer, free_port

pytestmark = pytest.mark.usefixtures("clean_bailu_env")

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


class Cli:
    """`bailu` in process against one Redis: (exit code, stdout, stderr) per call."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            code = main(["--redis-url", self.url, *args])
        except SystemExit as exc:  # argparse's own usage errors
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(redis_server.url, capsys)


@pytest.fixture
def db(redis_server: RedisServer) -> Any:
    client = Redis.from_url(redis_server.url)
    yield client
    client.close()


def stored_bytes(db: Redis) -> list[bytes]:
    """Every key name, hash field and value, and sorted-set member in the database (other types dumped)."""
    found: list[Any] = []
    for name in db.scan_iter(count=100):
        found.append(name)
        kind: Any = db.type(name)
        if kind == b"hash":
            fields: Any = db.hgetall(name)
            found += [*fields.keys(), *fields.values()]
        elif kind == b"zset":
            found += db.zrange(name, 0, -1)
        else:
            found.append(db.dump(name))
    return found


def test_create_json_prints_the_key_once_and_stores_only_its_hash(cli: Cli, db: Redis) -> None:
    before = time.time()
    created = cli.json(
        "keys", "create", "--name", "alice", "--scopes", "generate", "--rpm", "60", "--tpm", "10000",
        "--concurrency", "4", "--priority", "batch", "--expires-in", "30d",
    )  # fmt: skip
    assert set(created) == {"key", *PUBLIC_FIELDS}
    secret = created.pop("key")
    assert secret.startswith("bailu-")
    assert created["id"].startswith("key_")
    assert before <= created["created_at"] <= time.time()
    assert created["expires_at"] == pytest.approx(created["created_at"] + 30 * 86400)
    assert {k: v for k, v in created.items() if k not in ("id", "created_at", "expires_at")} == {
        "name": "alice",
        "scopes": ["generate"],
        "rpm": 60,
        "tpm": 10000,
        "concurrency": 4,
        "priority": "batch",
        "revoked_at": None,
        "state": "active",
    }
    # The gateway finds the record by the key's hash; the key itself is nowhere in Redis.
    assert db.hget(redis_keys.API_KEY_HASHES, hash_key(secret)) == created["id"].encode()
    stored = stored_bytes(db)
    assert stored
    assert not [item for item in stored if secret.encode() in item]
    # ... and never printed again.
    code, out, _ = cli("keys", "list")
    assert code == 0
    assert secret not in out
    assert secret not in json.dumps(cli.json("keys", "list"))


def test_create_defaults(cli: Cli) -> None:
    created = cli.json("keys", "create", "--name", "bob")
    assert (created["scopes"], created["priority"]) == (["feedback", "generate"], "interactive")
    assert (created["rpm"], created["tpm"], created["concurrency"], created["expires_at"]) == (None, None, None, None)


def test_create_plain_shows_the_key_once_with_a_warning_and_the_settings(cli: Cli, db: Redis) -> None:
    code, out, err = cli("keys", "create", "--name", "alice", "--rpm", "10")
    assert code == 0, err
    [key_id] = [i.decode() for i in db.zrange(redis_keys.API_KEYS_ZSET, 0, -1)]  # type: ignore[union-attr]
    secrets = [word for word in out.split() if word.startswith("bailu-")]
    assert len(secrets) == 1
    assert db.hget(redis_keys.API_KEY_HASHES, hash_key(secrets[0])) == key_id.encode()
    assert "shown only this once" in out
    assert key_id in out
    assert "rpm:" in out
    assert "10" in out


def test_list_in_creation_order_json_and_table(cli: Cli) -> None:
    assert cli.json("keys", "list") == []
    code, out, _ = cli("keys", "list")
    assert (code, out.startswith("no API keys")) == (0, True)

    created = [cli.json("keys", "create", "--name", f"tenant-{n}") for n in range(4)]
    revoked = cli.json("keys", "revoke", created[1]["id"])
    listed = cli.json("keys", "list")
    assert [k["id"] for k in listed] == [c["id"] for c in created]
    assert all(set(k) == PUBLIC_FIELDS for k in listed)
    assert listed[1] == revoked
    assert [k["state"] for k in listed] == ["active", "revoked", "active", "active"]

    code, out, _ = cli("keys", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "NAME", "SCOPES", "RPM", "TPM", "CONCURRENCY", "PRIORITY", "EXPIRES", "STATE"]
    assert [row.split()[0] for row in rows] == [c["id"] for c in created]
    assert rows[1].split()[-1] == "revoked"


def test_an_expired_key_is_listed_as_expired(cli: Cli, redis_server: RedisServer) -> None:
    async def create_an_hour_ago() -> str:
        client = AsyncRedis.from_url(redis_server.url)
        try:
            _, record = await KeyRegistry(client, clock=lambda: time.time() - 3600).create("old", expires_in_s=60)
        finally:
            await client.aclose()
        return record.id

    key_id = asyncio.run(create_an_hour_ago())
    [listed] = cli.json("keys", "list")
    assert (listed["id"], listed["state"]) == (key_id, "expired")
    code, out, _ = cli("keys", "list")
    assert code == 0
    assert out.splitlines()[1].split()[-1] == "expired"


def test_revoke_keeps_the_record_and_is_idempotent(cli: Cli, db: Redis) -> None:
    created = cli.json("keys", "create", "--name", "alice", "--rpm", "5")
    secret = created.pop("key")
    revoked = cli.json("keys", "revoke", created["id"])
    assert revoked["state"] == "revoked"
    assert revoked["revoked_at"] >= created["created_at"]
    assert {k: v for k, v in revoked.items() if k not in ("state", "revoked_at")} == {
        k: v for k, v in created.items() if k not in ("state", "revoked_at")
    }
    assert cli.json("keys", "revoke", created["id"]) == revoked
    # The hash still maps to the record, so that the gateway can tell a revoked key from an unknown one.
    assert db.hget(redis_keys.API_KEY_HASHES, hash_key(secret)) == created["id"].encode()
    code, out, _ = cli("keys", "revoke", created["id"])
    assert code == 0
    assert created["id"] in out
    assert "revoked" in out


def test_update_changes_only_what_is_given_and_0_clears_a_limit(cli: Cli) -> None:
    created = cli.json(
        "keys", "create", "--name", "alice", "--rpm", "10", "--tpm", "100", "--concurrency", "2", "--expires-in", "1d"
    )
    del created["key"]
    updated = cli.json("keys", "update", created["id"], "--rpm", "0", "--tpm", "500")
    assert (updated["rpm"], updated["tpm"]) == (None, 500)
    assert {k: v for k, v in updated.items() if k not in ("rpm", "tpm")} == {
        k: v for k, v in created.items() if k not in ("rpm", "tpm")
    }
    assert cli.json("keys", "list") == [updated]

    updated = cli.json("keys", "update", created["id"], "--priority", "batch", "--scopes", "admin,generate")
    assert (updated["priority"], updated["scopes"], updated["tpm"]) == ("batch", ["admin", "generate"], 500)

    before = time.time()
    updated = cli.json("keys", "update", created["id"], "--expires-in", "2h")
    assert before + 7200 <= updated["expires_at"] <= time.time() + 7200
    assert cli.json("keys", "update", created["id"], "--expires-in", "never")["expires_at"] is None

    code, out, err = cli("keys", "update", created["id"], "--concurrency", "0")
    assert code == 0, err
    assert created["id"] in out
    assert cli.json("keys", "list")[0]["concurrency"] is None


def test_a_revoked_key_cannot_be_updated(cli: Cli) -> None:
    created = cli.json("keys", "create", "--name", "alice", "--rpm", "10")
    revoked = cli.json("keys", "revoke", created["id"])
    code, out, err = cli("keys", "update", created["id"], "--rpm", "1000")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "revoked" in err
    assert cli.json("keys", "list") == [revoked]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["create", "--name", "x", "--rpm", "-1"], "--rpm"),
        (["create", "--name", "x", "--tpm", "many"], "--tpm"),
        (["create", "--name", "x", "--scopes", "bogus"], "--scopes"),
        (["create", "--name", "x", "--expires-in", "3x"], "--expires-in"),
        (["create", "--name", "x", "--priority", "urgent"], "--priority"),
        (["create", "--name", " "], "--name"),
        (["create"], "--name"),
        (["update", "key_0000000000000000", "--concurrency", "-2"], "--concurrency"),
        (["update", "key_0000000000000000", "--scopes", ""], "--scopes"),
        (["update", "key_0000000000000000"], "nothing to update"),
        (["revoke"], "ID"),
    ],
)
def test_usage_errors_exit_2_with_one_line(cli: Cli, db: Redis, args: list[str], option: str) -> None:
    code, out, err = cli("keys", *args)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert option in err
    assert db.dbsize() == 0


@pytest.mark.parametrize("action", [["revoke", "key_nope"], ["update", "key_nope", "--rpm", "1"]])
def test_an_unknown_id_exits_1(cli: Cli, db: Redis, action: list[str]) -> None:
    code, out, err = cli("keys", *action)
    assert (code, out) == (1, "")
    assert err == "bailu: error: no API key with id 'key_nope'\n"
    assert db.dbsize() == 0


@pytest.mark.parametrize("command", [["list"], ["create", "--name", "alice"], ["revoke", "key_x"]])
def test_without_redis_exit_1_with_one_line(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    assert main(["keys", *command, "--redis-url", url]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"bailu: error: Redis at {url} does not answer")


def test_no_redis_url_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "list", "--redis-url", ""]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "bailu: error: API keys are kept in Redis: pass --redis-url or set BAILU_REDIS_URL\n"


def test_as_an_operator_runs_it(redis_server: RedisServer, tmp_path: Path) -> None:
    """`python -m bailu.cli`: Redis from the environment or from the global option, before or after the command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAILU_")}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bailu.cli", *args],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = run("--redis-url", redis_server.url, "keys", "create", "--name", "ci", "--json")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["id"]
    listed = run("keys", "list", "--json", BAILU_REDIS_URL=redis_server.url)
    assert listed.returncode == 0, listed.stderr
    assert [k["id"] for k in json.loads(listed.stdout)] == [key_id]
    revoked = run("keys", "revoke", key_id, "--redis-url", redis_server.url)
    assert revoked.returncode == 0, revoked.stderr
    assert key_id in revoked.stdout
