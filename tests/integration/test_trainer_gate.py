"""The evaluation gate on real models, with a real redis-server: a candidate trained on the pairs beats the base
model and becomes the canary (with its merged export); once it is production, a candidate trained on the same
prompts with the training pairs swapped is measured against it and recorded as rejected without touching the
aliases; running again on a dataset version and config already built publishes nothing.

All three runs share one scenario (module scope): training dominates the cost.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from bailu.common import redis_keys
from bailu.datasets.store import DatasetStore
from bailu.registry import ModelRegistry, Registry, RegistryEvent, RegistryIndex, hash_dir
from bailu.trainer import data, swift_args
from bailu.trainer.pipeline import run
from bailu.trainer.result import Result
from bailu.trainer.settings import TrainerSettings
from tests.conftest import RedisServer, free_port
from tests.integration.test_trainer_stages import ADAPTER, BASE, add_batch, logits, settings, tree, warm_over_cold

pytestmark = pytest.mark.timeout(600)

MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json")

CANARY_WEIGHT = 0.25
SEED = 42
EVAL_FRACTION = 0.25


@dataclass
class Scenario:
    model: Path
    registry: Registry
    redis_url: str
    better: Result
    events_after_better: list[RegistryEvent]
    worse: Result
    events_after_worse: list[RegistryEvent]
    again: Result
    files_before_again: dict[str, bytes]
    files_after_again: dict[str, bytes]
    events_after_again: list[RegistryEvent]
    held_out: list[data.Pair]


@pytest.fixture(scope="module")
def learnable_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama's shape and tokenizer with larger random weights. The shared tiny model's output is nearly
    uniform (embeddings of std 0.02 under a final norm), so LoRA barely moves it and no preference is learned in a
    few steps; with std 0.3 twenty steps learn one, which the gate tests need."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("learnable-llama")
    config = LlamaConfig.from_pretrained(tiny_model)
    config.initializer_range = 0.3
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig.from_pretrained(tiny_model)
    model.save_pretrained(out)
    for path in tiny_model.iterdir():
        if path.is_file() and path.name not in MODEL_FILES:
            shutil.copy2(path, out / path.name)
    return out


def events(client: Redis) -> list[RegistryEvent]:
    entries: Any = client.xrange(redis_keys.REGISTRY_EVENTS_STREAM)
    return [RegistryEvent.from_fields({k.decode(): v.decode() for k, v in fields.items()}) for _, fields in entries]


def learned_settings(
    model: Path, dataset_dir: Path, root: Path, redis_url: str, **overrides: object
) -> TrainerSettings:
    """Enough training for the learnable tiny model to pick up warm-over-cold (about 3 s per stage)."""
    values: dict[str, object] = {
        "redis_url": redis_url,
        "lora_rank": 8,
        "lora_alpha": 16,
        "learning_rate": 1e-2,
        "rlhf_learning_rate": 1e-2,
        "max_steps": 20,
        "rlhf_max_steps": 10,
        "eval_fraction": EVAL_FRACTION,
        "seed": SEED,
        "canary_weight": CANARY_WEIGHT,
    }
    values.update(overrides)
    return settings(model, dataset_dir, root / "registry", root / "runs", **values)


@pytest.fixture(scope="module")
def scenario(learnable_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("BAILU_")}
    root = tmp_path_factory.mktemp("gate")
    server = RedisServer(free_port(), root)
    server.start()
    client = Redis.from_url(server.url)
    try:
        pairs = warm_over_cold(64)
        split = data.split_pairs(pairs, fraction=EVAL_FRACTION, max_pairs=200, seed=SEED)
        # The clean dataset, and a poisoned one with the same prompts: the held-out pairs as they are (sealed first),
        # the training pairs swapped (sealed second, so that its newest version holds both).
        clean = DatasetStore(root / "clean")
        add_batch(clean, "0001", pairs)
        poisoned = DatasetStore(root / "poisoned")
        add_batch(poisoned, "0001", split.held_out)
        add_batch(poisoned, "0002", [p.swapped() for p in split.train])

        better = run(learned_settings(learnable_model, clean.root, root, server.url, merge=True))
        after_better = events(client)
        registry = Registry(root / "registry")

        async def promote() -> None:
            async with AsyncRedis.from_url(server.url) as redis:
                await ModelRegistry(registry, RegistryIndex(redis)).promote("adapter", ADAPTER)

        asyncio.run(promote())
        worse = run(learned_settings(learnable_model, poisoned.root, root, server.url))
        after_worse = events(client)
        before_again = tree(registry.root)
        again = run(learned_settings(learnable_model, clean.root, root, server.url, merge=True))
        yield Scenario(
            model=learnable_model,
            registry=registry,
            redis_url=server.url,
            better=better,
            events_after_better=after_better,
            worse=worse,
            events_after_worse=after_worse,
            again=again,
            files_before_again=before_again,
            files_after_again=tree(registry.root),
            events_after_again=events(client),
            held_out=split.held_out,
        )
    finally:
        client.close()
        server.stop()
        os.environ.update(saved)


def summary(event: RegistryEvent) -> tuple[str, ...]:
    return (event.kind, event.name, event.version, event.what, *(f"{k}={v}" for k, v in sorted(event.details.items())))


def test_a_candidate_trained_on_the_pairs_becomes_the_canary(scenario: Scenario) -> None:
    result = scenario.better
    assert (result.outcome, result.exit_code, result.version, result.status) == ("published", 0, "v0001", "candidate")
    assert result.indexed is True
    metrics = result.metrics
    assert metrics["baseline"] == "base"
    assert metrics["candidate_accuracy"] >= 0.8
    assert metrics["candidate_accuracy"] - metrics["baseline_accuracy"] >= 0.02
    assert metrics["candidate_eval"]["pairs"] == len(scenario.held_out)
    assert set(metrics["losses"]) == {"sft", "orpo"}
    assert metrics["losses"]["sft"]["last_loss"] < metrics["losses"]["sft"]["first_loss"]
    assert set(metrics["wall_s"]) == {"snapshot", "sft", "rlhf", "evaluate", "export"}
    manifest = scenario.registry.manifest("adapter", ADAPTER, "v0001")
    assert manifest.metrics == metrics
    assert (manifest.base_model, manifest.base_model_sha256) == (BASE, hash_dir(scenario.model))
    assert manifest.dataset_version == "v000001"
    assert manifest.parent is None
    assert manifest.config == swift_args.training_config(
        learned_settings(scenario.model, Path(), Path(), "", merge=True)
    )
    # Through the index and the event stream, as the gateway and the workers see it.
    assert [summary(e) for e in scenario.events_after_better] == [
        ("adapter", ADAPTER, "v0001", "published", "status=candidate"),
        ("adapter", ADAPTER, "v0001", "alias", "alias=canary", "previous="),
        ("adapter", ADAPTER, "v0001", "canary_weight", "previous=0.0", f"weight={CANARY_WEIGHT!r}"),
        ("export", f"{ADAPTER}-merged", "v0001", "published", "status=candidate"),
    ]


def test_the_merged_export_is_the_base_with_the_adapter_folded_in(scenario: Scenario) -> None:
    registry = scenario.registry
    merged = registry.manifest("export", f"{ADAPTER}-merged", "v0001")
    assert (merged.parent, merged.dataset_version, merged.base_model) == ("v0001", "v000001", BASE)
    folder = registry.version_dir("export", f"{ADAPTER}-merged", "v0001")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.inference_mode():
        merged_logits = model(torch.tensor([[1, 400, 2000, 30, 7]])).logits
    adapter_logits = logits(scenario.model, registry.version_dir("adapter", ADAPTER, "v0001"))
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)


def test_a_candidate_trained_on_swapped_pairs_is_rejected_against_production(scenario: Scenario) -> None:
    result = scenario.worse
    assert (result.outcome, result.exit_code, result.version, result.status) == ("rejected", 0, "v0002", "rejected")
    metrics = result.metrics
    assert metrics["baseline"] == f"{ADAPTER}@v0001"
    assert metrics["baseline_accuracy"] == scenario.better.metrics["candidate_accuracy"]
    assert metrics["candidate_accuracy"] < 0.5  # it learned the opposite preference
    assert not metrics["accepted"]
    assert result.reason is not None
    assert "over the baseline's" in result.reason
    manifest = scenario.registry.manifest("adapter", ADAPTER, "v0002")
    assert (manifest.status, manifest.parent, manifest.dataset_version) == ("rejected", "v0001", "v000002")
    aliases = scenario.registry.aliases("adapter", ADAPTER)
    assert (aliases.production, aliases.canary, aliases.canary_weight) == ("v0001", None, 0.0)
    assert scenario.registry.versions("export", f"{ADAPTER}-merged") == ["v0001"]  # nothing exported when rejected
    new = scenario.events_after_worse[len(scenario.events_after_better) :]
    assert [summary(e) for e in new][-1] == ("adapter", ADAPTER, "v0002", "published", "status=rejected")
    assert not any(e.version == "v0002" and e.what != "published" for e in new)


def test_the_same_dataset_version_and_config_is_not_built_twice(scenario: Scenario) -> None:
    result = scenario.again
    assert (result.outcome, result.exit_code, result.version, result.status) == (
        "already_built",
        0,
        "v0001",
        "published",
    )
    assert result.final_line().startswith("already built poet@v0001 (status published) from dataset v000001")
    assert result.wall_s.keys() == {"snapshot"}  # nothing was trained
    assert scenario.files_after_again == scenario.files_before_again
    assert scenario.events_after_again == scenario.events_after_worse
    assert (Path(result.run_dir) / "result.json").is_file()


def test_the_index_matches_the_files(scenario: Scenario) -> None:
    async def compare() -> None:
        async with AsyncRedis.from_url(scenario.redis_url) as redis:
            index = RegistryIndex(redis)
            assert await index.aliases("adapter", ADAPTER) == scenario.registry.aliases("adapter", ADAPTER)
            assert await index.manifests("adapter", ADAPTER) == list(
                scenario.registry.state("adapter", ADAPTER).manifests
            )

    asyncio.run(compare())
