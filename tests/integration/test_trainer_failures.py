"""Runs that stop: `python -m bailu.trainer` exits 3 without enough data, 2 for settings this machine cannot run,
1 when a stage fails (a corrupt checkpoint, an argument ms-swift rejects, a diverging loss), each with a one-line
reason; and a failed run leaves the registry's files and its Redis index byte-for-byte as they were."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from bailu.datasets.store import DatasetStore
from bailu.registry import ModelRegistry, Registry, RegistryIndex
from bailu.trainer.pipeline import run
from tests.conftest import RedisServer, free_port
from tests.integration.test_trainer_stages import ADAPTER, BASE, add_batch, settings, tree, warm_over_cold

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("clean_bailu_env")]


def trainer(tmp_path: Path, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BAILU_")}
    environ.update({f"BAILU_TRAINER_{k.upper()}": v for k, v in env.items()})
    environ.setdefault("BAILU_TRAINER_WORK_DIR", str(tmp_path / "runs"))
    environ.setdefault("BAILU_TRAINER_REGISTRY_DIR", str(tmp_path / "registry"))
    return subprocess.run(
        [sys.executable, "-m", "bailu.trainer", *flags], env=environ, capture_output=True, text=True, timeout=300
    )


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def redis_state(client: Redis) -> dict[bytes, Any]:
    return {key: client.dump(key) for key in sorted(client.scan_iter(match="*"))}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    store = DatasetStore(tmp_path / "datasets")
    add_batch(store, "0001", warm_over_cold(24))
    return store.root


@pytest.fixture
def production(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Registry, Redis]]:
    """A registry (files and Redis index) that already serves a production adapter."""
    registry = Registry(tmp_path / "registry")
    source = tmp_path / "previous-adapter"
    source.mkdir()
    (source / "adapter_config.json").write_text('{"r": 4}')
    (source / "adapter_model.safetensors").write_bytes(b"weights")

    async def seed() -> None:
        async with AsyncRedis.from_url(redis_server.url) as redis:
            models = ModelRegistry(registry, RegistryIndex(redis))
            await models.publish("adapter", ADAPTER, source, base_model=BASE, dataset_version="v000000")
            await models.set_alias("adapter", ADAPTER, "production", "v0001")

    asyncio.run(seed())
    client = Redis.from_url(redis_server.url)
    yield registry, client
    client.close()


def test_too_few_pairs_exit_3_naming_the_numbers(tmp_path: Path, dataset: Path, tiny_model: Path) -> None:
    done = trainer(tmp_path, "--dataset-dir", str(dataset), "--model-path", str(tiny_model), min_pairs="50")
    assert done.returncode == 3, done.stderr
    reason = "dataset v000001 has 24 usable preference pairs; at least 50 are needed (min_pairs)"
    assert last_line(done.stderr) == f"error: {reason}"
    assert last_line(done.stdout) == f"[trainer] failed (exit 3): {reason}"
    assert not (tmp_path / "registry").exists()


def test_no_dataset_version_exits_3(tmp_path: Path, tiny_model: Path) -> None:
    done = trainer(tmp_path, "--json", dataset_dir=str(tmp_path / "empty"), model_path=str(tiny_model))
    assert done.returncode == 3
    assert "no sealed dataset version under" in last_line(done.stderr)
    assert '"outcome": "failed"' in last_line(done.stdout)


def test_an_unreachable_redis_or_a_missing_checkpoint_exit_2(tmp_path: Path, dataset: Path, tiny_model: Path) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    done = trainer(tmp_path, "--redis-url", unreachable, "--model-path", str(tiny_model), dataset_dir=str(dataset))
    assert done.returncode == 2
    assert last_line(done.stderr).startswith("error: cannot reach Redis at redis_url (ConnectionError")
    done = trainer(tmp_path, "--base-model", "nowhere", dataset_dir=str(dataset))
    assert done.returncode == 2
    assert last_line(done.stderr) == "error: model_path is not set and the registry has no base model 'nowhere'"


def test_bad_settings_exit_2_with_one_line(tmp_path: Path) -> None:
    done = trainer(tmp_path, "--lora-rank", "-1", "--rlhf-type", "grpo")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: bad settings: lora_rank: ")
    assert "rlhf_type" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: GPTQ would run, not be refused")
def test_gptq_is_refused_without_cuda_before_anything_is_read(tmp_path: Path, tiny_model: Path) -> None:
    done = trainer(tmp_path, "--quantize", "gptq", "--model-path", str(tiny_model), dataset_dir=str(tmp_path / "none"))
    assert done.returncode == 2
    assert last_line(done.stderr) == "error: quantize gptq needs a CUDA GPU, and none is available here"


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed: QLoRA would run"
)
def test_qlora_without_bitsandbytes_is_refused_before_training(tmp_path: Path, dataset: Path, tiny_model: Path) -> None:
    done = trainer(tmp_path, "--quant-bits", "4", "--dataset-dir", str(dataset), "--model-path", str(tiny_model))
    assert done.returncode == 2
    assert "needs the bitsandbytes package" in last_line(done.stderr)
    assert "stage sft" not in done.stdout


def test_a_corrupt_base_checkpoint_fails_the_sft_stage_and_publishes_nothing(
    tmp_path: Path, dataset: Path, tiny_model: Path, production: tuple[Registry, Redis], redis_server: RedisServer
) -> None:
    registry, client = production
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    files, index = tree(registry.root), redis_state(client)

    done = trainer(
        tmp_path, "--dataset-dir", str(dataset), "--model-path", str(broken), "--redis-url", redis_server.url,
        "--min-pairs", "10", "--max-steps", "2", "--rlhf-type", "none", "--base-model", BASE, "--adapter-name", ADAPTER,
    )  # fmt: skip

    assert done.returncode == 1, done.stdout + done.stderr
    assert last_line(done.stderr).startswith("error: stage sft failed: ")
    assert "Traceback" not in done.stdout
    assert "[trainer] stage sft: failed after" in done.stdout
    assert tree(registry.root) == files
    assert redis_state(client) == index


def test_an_argument_ms_swift_rejects_fails_its_stage_after_sft_and_publishes_nothing(
    tmp_path: Path, dataset: Path, tiny_model: Path, production: tuple[Registry, Redis], redis_server: RedisServer
) -> None:
    registry, client = production
    files, index = tree(registry.root), redis_state(client)
    s = settings(tiny_model, dataset, registry.root, tmp_path / "runs", redis_url=redis_server.url,
                 extra_rlhf_args=["--no_such_flag", "1"])  # fmt: skip

    result = run(s)

    assert (result.outcome, result.exit_code) == ("failed", 1)
    assert result.reason is not None
    assert result.reason.startswith("stage rlhf failed: ValueError: remaining_argv: ['--no_such_flag', '1']")
    assert set(result.wall_s) == {"snapshot", "sft", "rlhf"}
    assert tree(registry.root) == files
    assert redis_state(client) == index
    assert (Path(result.run_dir) / "result.json").is_file()


def test_a_diverging_loss_stops_training_and_publishes_nothing(tmp_path: Path, dataset: Path, tiny_model: Path) -> None:
    registry_dir = tmp_path / "registry"
    result = run(settings(tiny_model, dataset, registry_dir, tmp_path / "runs", learning_rate=1e12, max_steps=6))
    assert (result.outcome, result.exit_code) == ("failed", 1)
    assert result.reason is not None
    assert result.reason.startswith("stage sft failed: training diverged: loss is nan")
    assert not registry_dir.exists()
