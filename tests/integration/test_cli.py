"""The `bailu` CLI as an operator runs it: a real subprocess over a registry and datasets in tmp_path, and a
real redis-server whose index and change events must follow every change the CLI makes."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bailu.datasets.format import PREFERENCE, SFT, Example
from bailu.datasets.store import DatasetStore
from bailu.registry import Registry, RegistryIndex
from tests.conftest import RedisServer, free_port

ADAPTER = "bailu-poet"


def cli_env(**extra: str) -> dict[str, str]:
    """The environment without any BAILU_* variable of the machine running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAILU_")}
    env.update(extra)
    return env


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bailu.cli", *args],
        cwd=cwd,
        env=cli_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_json(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    done = run(*args, "--json", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def weights(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "sources" / text
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_text(text)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return folder


def build_registry(tmp_path: Path) -> Registry:
    """adapter bailu-poet: v0001 production, v0002 canary at 10%, v0003 a fresh candidate; base smollm2."""
    registry = Registry(tmp_path / "registry")
    for number, text in enumerate(("a", "b", "c"), start=1):
        registry.publish(
            "adapter",
            ADAPTER,
            weights(tmp_path, text),
            base_model="smollm2-135m-instruct",
            dataset_version=f"v{number:06d}",
            # As the trainer records them: the gate's verdict first, nested details after.
            metrics={
                "accepted": True,
                "baseline_accuracy": 0.5,
                "candidate_accuracy": 0.5 + number / 10,
                "data": {"pairs": 100 * number},
            },
        )
    registry.set_alias("adapter", ADAPTER, "production", "v0001")
    registry.set_canary("adapter", ADAPTER, "v0002", 0.1)
    base = tmp_path / "sources" / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    registry.publish("base", "smollm2-135m-instruct", base)
    return registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return build_registry(tmp_path)


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


# --------------------------------------------------------------------------- the console script


def test_the_console_script_is_installed_and_runs_main() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts", name="bailu")
    assert [ep.value for ep in scripts] == ["bailu.cli:main"], "reinstall the package (make setup) for the script"
    from bailu.cli import main

    assert next(iter(scripts)).load() is main
    script = Path(sys.executable).parent / "bailu"
    assert script.is_file(), f"{script} is missing: reinstall the package (make setup)"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, env=cli_env())
    assert done.returncode == 0, done.stderr
    for command in ("models", "datasets", "train", "retrain"):
        assert command in done.stdout


# --------------------------------------------------------------------------- reading the registry


def test_models_list_and_show(tmp_path: Path, registry: Registry) -> None:
    listed = run_json("models", "list", "--registry-dir", str(registry.root), cwd=tmp_path)
    by_name = {(m["kind"], m["name"]): m for m in listed}
    assert by_name[("adapter", ADAPTER)] == {
        "kind": "adapter",
        "name": ADAPTER,
        "production": "v0001",
        "canary": "v0002",
        "canary_weight": 0.1,
        "versions": 3,
        "latest": "v0003",
    }
    assert by_name[("base", "smollm2-135m-instruct")]["versions"] == 1
    only_base = run_json("models", "list", "--kind", "base", "--registry-dir", str(registry.root), cwd=tmp_path)
    assert [m["name"] for m in only_base] == ["smollm2-135m-instruct"]

    # The global option also works before the command, and from the environment.
    env = cli_env(BAILU_REGISTRY_DIR=str(registry.root))
    shown = run_json("models", "show", ADAPTER, cwd=tmp_path, env=env)
    assert shown["aliases"]["production"] == "v0001"
    assert [(v["version"], v["aliases"]) for v in shown["versions"]] == [
        ("v0001", ["production"]),
        ("v0002", ["canary"]),
        ("v0003", []),
    ]
    manifest = {k: v for k, v in shown["versions"][2].items() if k != "aliases"}
    assert manifest == registry.manifest("adapter", ADAPTER, "v0003").to_dict()
    canary = run_json("--registry-dir", str(registry.root), "models", "show", ADAPTER, "canary", cwd=tmp_path)
    assert canary["version"] == "v0002"
    assert canary["path"] == str(registry.version_dir("adapter", ADAPTER, "v0002"))
    assert canary["aliases"] == ["canary"]

    human = run("models", "show", ADAPTER, cwd=tmp_path, env=env)
    assert human.returncode == 0, human.stderr
    header = next(line for line in human.stdout.splitlines() if line.startswith("VERSION"))
    row = next(line for line in human.stdout.splitlines() if line.startswith("v0002"))
    # Aligned columns: each value starts under its header.
    for column, value in (("STATUS", "candidate"), ("DATASET", "v000002"), ("ALIASES", "canary")):
        assert row.index(value) == header.index(column)
    # The gate's figures lead the metrics column; nested ones are counted, not shown.
    assert row[header.index("METRICS") :].startswith("candidate_accuracy=0.7 baseline_accuracy=0.5 accepted=true")
    assert "(+1 more)" in row


# --------------------------------------------------------------------------- changing it through Redis


async def test_changes_go_to_the_files_the_index_and_the_event_stream(
    tmp_path: Path, registry: Registry, redis_server: RedisServer, redis: Redis
) -> None:
    env = cli_env(BAILU_REGISTRY_DIR=str(registry.root), BAILU_REDIS_URL=redis_server.url)
    index = RegistryIndex(redis)

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(run_json, *args, cwd=tmp_path, env=env)

    async def new_events() -> list[tuple[str, str, str, dict[str, str]]]:
        nonlocal seen
        entries = await index.events(after=seen)
        if entries:
            seen = entries[-1][0]
        return [(e.version, e.what, e.kind, e.details) for _, e in entries]

    seen = "0-0"
    rebuilt = await cli("models", "reindex")
    assert rebuilt["versions"] == 4
    assert rebuilt["names"] == 2
    assert await index.aliases("adapter", ADAPTER) == registry.aliases("adapter", ADAPTER)
    assert await new_events() == [], "a rebuild announces nothing"

    promoted = await cli("models", "promote", ADAPTER)
    assert promoted["index"] == "redis"
    assert (promoted["before"]["production"], promoted["after"]["production"]) == ("v0001", "v0002")
    assert (promoted["before"]["canary"], promoted["after"]["canary"]) == ("v0002", None)
    files = registry.aliases("adapter", ADAPTER)
    assert files.production == "v0002"
    assert files.canary is None
    assert await index.aliases("adapter", ADAPTER) == files
    assert registry.manifest("adapter", ADAPTER, "v0002").status == "published"
    assert await new_events() == [
        ("v0002", "status", "adapter", {"status": "published", "previous": "candidate"}),
        ("v0002", "alias", "adapter", {"alias": "production", "previous": "v0001"}),
        ("", "alias", "adapter", {"alias": "canary", "previous": "v0002"}),
        ("", "canary_weight", "adapter", {"weight": "0.0", "previous": "0.1"}),
    ]

    canary = await cli("models", "canary", ADAPTER, "v0003", "--weight", "0.25")
    assert (canary["after"]["canary"], canary["after"]["canary_weight"]) == ("v0003", 0.25)
    assert await new_events() == [
        ("v0003", "alias", "adapter", {"alias": "canary", "previous": ""}),
        ("v0003", "canary_weight", "adapter", {"weight": "0.25", "previous": "0.0"}),
    ]
    # Without VERSION: the current canary gets the new weight.
    reweighted = await cli("models", "canary", ADAPTER, "--weight", "0.5")
    assert (reweighted["after"]["canary"], reweighted["after"]["canary_weight"]) == ("v0003", 0.5)
    assert await new_events() == [("v0003", "canary_weight", "adapter", {"weight": "0.5", "previous": "0.25"})]
    assert (await index.manifest("adapter", ADAPTER, "canary")) == registry.manifest("adapter", ADAPTER, "v0003")

    cleared = await cli("models", "canary", ADAPTER, "--clear")
    assert cleared["after"]["canary"] is None
    assert cleared["after"]["canary_weight"] == 0.0
    assert [e[1] for e in await new_events()] == ["alias", "canary_weight"]

    rolled = await cli("models", "rollback", ADAPTER)
    assert (rolled["before"]["production"], rolled["after"]["production"]) == ("v0002", "v0001")
    assert await new_events() == [("v0001", "alias", "adapter", {"alias": "production", "previous": "v0002"})]
    assert await index.aliases("adapter", ADAPTER) == registry.aliases("adapter", ADAPTER)
    # The index equals one rebuilt from the files.
    snapshot = await index.snapshot()
    await index.rebuild(registry)
    assert await index.snapshot() == snapshot


def test_human_output_says_what_changed(tmp_path: Path, registry: Registry, redis_server: RedisServer) -> None:
    env = cli_env(BAILU_REGISTRY_DIR=str(registry.root), BAILU_REDIS_URL=redis_server.url)
    done = run("models", "promote", ADAPTER, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == f"adapter/{ADAPTER}: promoted the canary to production (registry files and Redis index)"
    assert "production: v0001 -> v0002" in lines[1]
    assert "canary:     v0002 (10%) -> none" in lines[2]


def test_without_redis_the_files_change_with_a_warning(tmp_path: Path, registry: Registry) -> None:
    url = dead_redis_url()
    done = run("models", "promote", ADAPTER, "--registry-dir", str(registry.root), "--redis-url", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"Redis at {url} does not answer" in done.stderr
    assert "workers notice at their next registry poll" in done.stderr
    assert "bailu models reindex" in done.stderr
    assert "(registry files only)" in done.stdout
    assert registry.aliases("adapter", ADAPTER).production == "v0002"
    # An empty URL means files only on purpose: the same, with its own warning.
    done = run("models", "rollback", ADAPTER, "--registry-dir", str(registry.root), "--redis-url", "", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no Redis URL" in done.stderr
    assert registry.aliases("adapter", ADAPTER).production == "v0001"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["models", "show", "no-such-model"], 1, "bailu: error: no model named 'no-such-model' in "),
        (["models", "show", ADAPTER, "v0042"], 1, f"bailu: error: no version adapter/{ADAPTER}@v0042"),
        (["models", "promote", "no-such-model"], 1, "no model named 'no-such-model'"),
        (["models", "canary", ADAPTER, "v0009", "--weight", "0.1"], 1, f"no version adapter/{ADAPTER}@v0009"),
        (["models", "canary", ADAPTER, "v0001", "--weight", "0.1"], 1, "v0001 is already production"),
        (["models", "canary", ADAPTER, "--weight", "1.5"], 2, "argument --weight: must be within 0..1"),
        (["models", "canary", ADAPTER, "--weight", "nan"], 2, "argument --weight: must be within 0..1"),
        (["models", "canary", ADAPTER, "--weight", "lots"], 2, "argument --weight: not a number: 'lots'"),
        (["models", "canary", ADAPTER], 2, "--weight is required (or --clear to remove the canary)"),
        (["models", "canary", ADAPTER, "--clear", "--weight", "0.1"], 2, "--clear takes no VERSION and no --weight"),
        (["models", "list", "--kind", "lora"], 2, "argument --kind: invalid choice: 'lora'"),
        (["models", "frobnicate"], 2, "argument ACTION: invalid choice: 'frobnicate'"),
        (["models", "reindex", "--redis-url", ""], 1, "reindex needs Redis"),
        (["models", "reindex", "--redis-url", "http://example.com"], 1, "invalid Redis URL 'http://example.com'"),
    ],
    ids=[
        "unknown-name",
        "unknown-version",
        "promote-unknown-name",
        "canary-unknown-version",
        "canary-is-production",
        "weight-above-1",
        "weight-nan",
        "weight-not-a-number",
        "canary-without-weight",
        "clear-with-weight",
        "unknown-kind",
        "unknown-action",
        "reindex-without-redis",
        "reindex-bad-url",
    ],
)
def test_errors_are_one_line_with_an_exit_code(
    tmp_path: Path, registry: Registry, args: list[str], code: int, message: str
) -> None:
    before = registry.aliases("adapter", ADAPTER)
    done = run(*args, cwd=tmp_path, env=cli_env(BAILU_REGISTRY_DIR=str(registry.root), BAILU_REDIS_URL=""))
    assert done.returncode == code, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, done.stderr
    assert message in errors[0]
    assert "Traceback" not in done.stderr
    assert registry.aliases("adapter", ADAPTER) == before, "a failed command changes nothing"


def test_promote_and_rollback_need_something_to_move_to(tmp_path: Path, registry: Registry) -> None:
    env = cli_env(BAILU_REGISTRY_DIR=str(registry.root), BAILU_REDIS_URL="")
    assert run("models", "canary", ADAPTER, "--clear", cwd=tmp_path, env=env).returncode == 0
    done = run("models", "promote", ADAPTER, cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().endswith(f"bailu: error: adapter/{ADAPTER}: there is no canary to promote")
    done = run("models", "rollback", "smollm2-135m-instruct", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "bailu: error: base/smollm2-135m-instruct: " in done.stderr
    assert "roll back" in done.stderr


def test_a_name_of_two_kinds_needs_the_kind(tmp_path: Path, registry: Registry) -> None:
    registry.publish("export", ADAPTER, weights(tmp_path, "merged"))
    env = cli_env(BAILU_REGISTRY_DIR=str(registry.root), BAILU_REDIS_URL="")
    done = run("models", "show", ADAPTER, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert f"'{ADAPTER}' exists as adapter and export: pass --kind" in done.stderr
    shown = run_json("models", "show", ADAPTER, "--kind", "export", cwd=tmp_path, env=env)
    assert [v["version"] for v in shown["versions"]] == ["v0001"]


def test_a_missing_registry_or_dataset_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = run("models", "list", "--registry-dir", str(missing), cwd=tmp_path)
    assert done.returncode == 1
    assert f"registry directory {missing} does not exist" in done.stderr
    done = run("datasets", "list", "--dataset-dir", str(missing), cwd=tmp_path)
    assert done.returncode == 1
    assert f"dataset directory {missing} does not exist" in done.stderr


def test_defaults_are_the_dev_stack_locations(tmp_path: Path) -> None:
    """With no option or variable, the CLI reads `make dev`'s state under .cache/dev of the current directory."""
    build_registry(tmp_path / ".cache" / "dev-src")  # sources elsewhere; registry moved into place below
    (tmp_path / ".cache" / "dev").mkdir(parents=True)
    (tmp_path / ".cache" / "dev-src" / "registry").rename(tmp_path / ".cache" / "dev" / "registry")
    listed = run_json("models", "list", cwd=tmp_path)
    assert {m["name"] for m in listed} == {ADAPTER, "smollm2-135m-instruct"}


# --------------------------------------------------------------------------- datasets


def example(kind: str, number: int) -> Example:
    return Example(
        kind=kind,
        source="comparison" if kind == PREFERENCE else "rating",
        event_id=f"1700000000000-{number}",
        created=1_700_000_000.0 + number,
        prompt=[{"role": "user", "content": f"Write about autumn light, take {number}."}],
        answer=f"Dew on the grass at dawn, {number} times.",
        rejected="Light." if kind == PREFERENCE else None,
    )


def test_datasets_list_and_show(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "datasets")
    store.write_batch("1700000000000-a", [example(SFT, 1), example(PREFERENCE, 2), example(PREFERENCE, 3)], "c1")
    first = store.seal()
    store.write_batch("1700000001000-b", [example(SFT, 4), example(PREFERENCE, 5)], "c1")
    second = store.seal()
    env = cli_env(BAILU_DATASET_DIR=str(store.root))

    listed = run_json("datasets", "list", cwd=tmp_path, env=env)
    assert [d["version"] for d in listed] == [first, second]
    for entry, version in zip(listed, (first, second), strict=True):
        manifest = store.manifest(version)
        assert entry["counts"] == manifest["counts"]
        assert entry["new_since_previous"] == manifest["new_since_previous"]
        assert entry["previous"] == manifest["previous"]
        assert entry["batches"] == len(manifest["batches"])
    assert listed[1]["counts"] == {SFT: 2, PREFERENCE: 3}
    assert listed[1]["new_since_previous"] == {SFT: 1, PREFERENCE: 1}

    assert run_json("datasets", "show", cwd=tmp_path, env=env) == store.manifest(second), "default: the newest"
    assert run_json("datasets", "show", first, cwd=tmp_path, env=env) == store.manifest(first)

    human = run("datasets", "list", cwd=tmp_path, env=env)
    assert human.returncode == 0, human.stderr
    header, *rows = human.stdout.splitlines()
    assert header.split()[:4] == ["VERSION", "CREATED", "SFT", "PREFERENCE"]
    assert rows[1].split()[0] == second
    assert rows[1].split()[2:4] == ["2", "3"]
    shown = run("datasets", "show", first, cwd=tmp_path, env=env)
    assert re.search(r"^previous:\s+none$", shown.stdout, re.MULTILINE), shown.stdout
    assert f"  {PREFERENCE}: 2 (2 new)" in shown.stdout

    unknown = run("datasets", "show", "v999999", cwd=tmp_path, env=env)
    assert unknown.returncode == 1
    assert f"bailu: error: no dataset version 'v999999' in {store.root} (newest: {first}, {second})" in unknown.stderr
    traversal = run("datasets", "show", "../versions", cwd=tmp_path, env=env)
    assert traversal.returncode == 1


def test_no_dataset_versions_yet(tmp_path: Path) -> None:
    (tmp_path / "datasets").mkdir()
    env = cli_env(BAILU_DATASET_DIR=str(tmp_path / "datasets"))
    assert run_json("datasets", "list", cwd=tmp_path, env=env) == []
    done = run("datasets", "show", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "no sealed dataset versions in" in done.stderr


# --------------------------------------------------------------------------- train


ECHO_TRAINER = """
import json, os, sys
with open(os.environ["ECHO_OUT"], "w") as out:
    json.dump({"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith("BAILU_")}}, out)
sys.exit(int(os.environ["ECHO_EXIT"]))
"""


def run_with_echo_trainer(tmp_path: Path, args: list[str], **env: str) -> tuple[int, dict[str, Any], str]:
    """`bailu train ...` in a subprocess whose trainer module is a stand-in that records what it was given."""
    (tmp_path / "echo_trainer.py").write_text(ECHO_TRAINER)
    out = tmp_path / "trainer-call.json"
    code = (
        "import sys; import bailu.cli.train as train; train.TRAINER_MODULE = 'echo_trainer'; "
        "from bailu.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        env=cli_env(PYTHONPATH=str(tmp_path), ECHO_OUT=str(out), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(out.read_text()), done.stderr


def test_train_passes_the_flags_verbatim_and_returns_the_trainers_exit_code(tmp_path: Path) -> None:
    flags = ["--dataset-version", "v000007", "--redis-url", "redis://elsewhere:6379/0", "--help", "--", "x y"]
    code, call, _ = run_with_echo_trainer(
        tmp_path, ["--registry-dir", "reg", "train", *flags], ECHO_EXIT="3", BAILU_REDIS_URL=""
    )
    assert code == 3
    assert call["argv"] == flags
    # The CLI's locations are the trainer's defaults (its own flags still win, inside the trainer).
    assert call["env"]["BAILU_TRAINER_REGISTRY_DIR"] == "reg"
    assert call["env"]["BAILU_TRAINER_DATASET_DIR"] == str(Path(".cache/dev/datasets"))
    assert "BAILU_TRAINER_REDIS_URL" not in call["env"]


def test_train_keeps_the_trainers_own_variables_and_passes_a_live_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    code, call, stderr = run_with_echo_trainer(
        tmp_path, ["train"], ECHO_EXIT="0", BAILU_REDIS_URL=redis_server.url, BAILU_TRAINER_DATASET_DIR="/data/d"
    )
    assert code == 0, stderr
    assert call["argv"] == []
    assert call["env"]["BAILU_TRAINER_DATASET_DIR"] == "/data/d"
    assert call["env"]["BAILU_TRAINER_REDIS_URL"] == redis_server.url
    # A Redis that does not answer is not handed on: the trainer would fail at its very end otherwise.
    url = dead_redis_url()
    code, call, stderr = run_with_echo_trainer(tmp_path, ["train"], ECHO_EXIT="0", BAILU_REDIS_URL=url)
    assert "BAILU_TRAINER_REDIS_URL" not in call["env"]
    assert f"Redis at {url} does not answer" in stderr


def test_train_runs_the_real_trainer(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("bailu.trainer.__main__") is None:
        pytest.skip("bailu.trainer has no __main__ yet: the trainer is not in this tree")
    done = run("train", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--dataset-version" in done.stdout
