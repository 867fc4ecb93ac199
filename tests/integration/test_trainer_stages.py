"""The trainer's ms-swift stages on the tiny random Llama, for real: SFT, then ORPO, DPO and KTO continuing from the
SFT adapter, each leaving an adapter that PEFT loads and that changes the model's output; the command lines the
trainer builds are accepted by ms-swift's own argument parsers (GPU-only ones included); and a whole run whose
generations fail the sanity check is recorded as rejected.

Also the helpers the other trainer tests share: datasets written by the collector's DatasetStore, a registry
snapshot, and a tiny model that can learn a preference in a few steps.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from bailu.datasets.format import PREFERENCE, Example
from bailu.datasets.store import DatasetStore
from bailu.registry import Registry
from bailu.trainer import data, export, swift_args, swift_runner
from bailu.trainer.pipeline import SCRATCH, run
from bailu.trainer.progress import Progress
from bailu.trainer.settings import TrainerSettings

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("clean_bailu_env")]

BASE = "tiny-llama"
ADAPTER = "poet"
WARM = ["sun", "gold", "warm", "light", "dawn", "honey", "amber", "glow", "bright", "summer"]
COLD = ["ice", "grey", "cold", "dark", "dusk", "frost", "ash", "gloom", "bleak", "winter"]
THINGS = ["leaf", "river", "stone", "cloud", "moon", "field", "bird", "tree", "lamp", "bell", "road", "hill"]


# shared helpers


def warm_over_cold(count: int, seed: int = 1) -> list[data.Pair]:
    """Pairs with a learnable preference: six words from a warm vocabulary over six from a cold one."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        prompt = f"Write one line about the {rng.choice(THINGS)}, please ({i})."
        chosen = " ".join(rng.choice(WARM) for _ in range(6)).capitalize() + "."
        rejected = " ".join(rng.choice(COLD) for _ in range(6)).capitalize() + "."
        pairs.append(data.Pair((("user", prompt),), chosen, rejected))
    return pairs


def add_batch(store: DatasetStore, name: str, pairs: list[data.Pair]) -> str:
    """Write pairs as one collector batch and seal a version holding every batch so far."""
    examples = [
        Example(PREFERENCE, "comparison", f"{name}-{i}", time.time(), p.messages, p.chosen, p.rejected)
        for i, p in enumerate(pairs)
    ]
    store.write_batch(name, examples, "test")
    version = store.seal()
    assert version is not None
    return version


def settings(model: Path, dataset_dir: Path, registry_dir: Path, work_dir: Path, **overrides: Any) -> TrainerSettings:
    values: dict[str, Any] = {
        "dataset_dir": dataset_dir,
        "registry_dir": registry_dir,
        "work_dir": work_dir,
        "model_path": model,
        "base_model": BASE,
        "adapter_name": ADAPTER,
        "min_pairs": 10,
        "eval_fraction": 0.25,
        "lora_rank": 4,
        "lora_alpha": 8,
        "learning_rate": 1e-3,
        "rlhf_learning_rate": 1e-3,
        "max_steps": 3,
        "rlhf_max_steps": 2,
        "batch_size": 4,
        "grad_accum": 1,
        "max_length": 128,
        "sanity_prompts": 0,
    }
    values.update(overrides)
    return TrainerSettings(**values)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (hidden lock files included): equal trees are byte-for-byte equal."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def logits(base: Path, adapter: Path | None) -> torch.Tensor:
    """The model's output on a fixed input, with the adapter loaded by PEFT (as a plain PEFT user would)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.inference_mode():
        return model(torch.tensor([[1, 400, 2000, 30, 7]])).logits


# stages


@pytest.fixture(scope="module")
def stage_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stage-data")
    pairs = warm_over_cold(24)
    data.write_jsonl(folder / "sft.jsonl", (p.chosen_example() for p in pairs))
    data.write_jsonl(folder / "preference.jsonl", (p.to_swift() for p in pairs))
    data.write_jsonl(folder / "kto.jsonl", data.kto_records(pairs))
    return folder


def train(stage: str, entry: str, argv: Any, tmp: Path) -> swift_runner.TrainingRun:
    return swift_runner.train(stage, entry, argv, Progress(open(os.devnull, "w"), log_path=tmp / "progress.log"))


@pytest.fixture(scope="module")
def sft_run(tiny_model: Path, stage_data: Path, tmp_path_factory: pytest.TempPathFactory) -> swift_runner.TrainingRun:
    tmp = tmp_path_factory.mktemp("sft")
    s = settings(tiny_model, tmp, tmp, tmp)
    return train(
        "sft", "sft_main", lambda cb: swift_args.sft_args(s, tiny_model, stage_data / "sft.jsonl", tmp / "out", cb), tmp
    )


def test_sft_produces_an_adapter_peft_loads(tiny_model: Path, sft_run: swift_runner.TrainingRun) -> None:
    config = json.loads((sft_run.checkpoint / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    assert sft_run.steps == 3
    assert len(sft_run.losses) == 3
    assert not torch.allclose(logits(tiny_model, None), logits(tiny_model, sft_run.checkpoint))


@pytest.mark.parametrize("rlhf_type", ["orpo", "dpo", "kto"])
def test_preference_stages_continue_from_the_sft_adapter(
    tiny_model: Path, stage_data: Path, sft_run: swift_runner.TrainingRun, rlhf_type: str, tmp_path: Path
) -> None:
    s = settings(tiny_model, tmp_path, tmp_path, tmp_path, rlhf_type=rlhf_type)
    dataset = stage_data / ("kto.jsonl" if rlhf_type == "kto" else "preference.jsonl")
    trained = train(
        "rlhf",
        "rlhf_main",
        lambda cb: swift_args.rlhf_args(s, tiny_model, dataset, tmp_path / "out", sft_run.checkpoint, cb),
        tmp_path,
    )
    assert trained.steps == 2
    config = json.loads((trained.checkpoint / "adapter_config.json").read_text())
    assert config["r"] == 4
    exported = export.adapter(trained.checkpoint, tmp_path / "published")
    assert sorted(p.name for p in exported.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "additional_config.json",
        "args.json",
    ]
    after = logits(tiny_model, exported)
    assert not torch.allclose(after, logits(tiny_model, sft_run.checkpoint)), "the preference stage changed nothing"
    assert "step 2/2" in (tmp_path / "progress.log").read_text()


def test_command_lines_are_valid_for_the_installed_ms_swift(tiny_model: Path, stage_data: Path, tmp_path: Path) -> None:
    """Including the GPU-only ones that cannot run here (QLoRA, GPTQ/AWQ export): ms-swift's parsers accept them."""
    swift_runner.import_swift()
    from swift.arguments import ExportArguments, RLHFArguments, SftArguments
    from swift.utils import parse_args

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    s = settings(tiny_model, tmp_path, tmp_path, tmp_path)
    sft_file, pref_file = stage_data / "sft.jsonl", stage_data / "preference.jsonl"
    cases = [
        (SftArguments, swift_args.sft_args(settings(tiny_model, tmp_path, tmp_path, tmp_path, quant_bits=4),
                                           tiny_model, sft_file, tmp_path / "sft")),
        (RLHFArguments, swift_args.rlhf_args(settings(tiny_model, tmp_path, tmp_path, tmp_path, rlhf_type="dpo"),
                                             tiny_model, pref_file, tmp_path / "rlhf", None)),
        (ExportArguments, swift_args.merge_args(s, tiny_model, adapter, tmp_path / "merged")),
        (ExportArguments, swift_args.quantize_args(settings(tiny_model, tmp_path, tmp_path, tmp_path, quantize="gptq"),
                                                   tiny_model, adapter, sft_file, tmp_path / "gptq")),
    ]  # fmt: skip
    parsed = []
    for cls, argv in cases:
        args, remaining = parse_args(cls, argv)
        assert remaining == []
        parsed.append(args)
    assert (parsed[0].quant_method, parsed[0].quant_bits) == ("bnb", 4)
    assert parsed[1].rlhf_type == "dpo"
    assert parsed[2].merge_lora is True
    assert (parsed[3].quant_method, parsed[3].quant_bits, parsed[3].merge_lora) == ("gptq", 4, True)


def test_a_run_whose_generations_fail_the_sanity_check_is_recorded_as_rejected(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The untrained tiny model answers with blank lines; the gate's margin is opened so that only the sanity check
    can reject it. This run also takes its base checkpoint from the registry (no model_path), goes through the DPO
    stage and publishes to the files only."""
    store = DatasetStore(tmp_path / "datasets")
    version = add_batch(store, "0001", warm_over_cold(24))
    registry = Registry(tmp_path / "registry")
    base = registry.publish("base", BASE, tiny_model)
    s = settings(
        tiny_model,
        store.root,
        registry.root,
        tmp_path / "runs",
        model_path=None,
        rlhf_type="dpo",
        gate_margin=-1,
        sanity_prompts=2,
        sanity_max_tokens=8,
    )

    result = run(s)

    assert (result.outcome, result.exit_code, result.status, result.version) == ("rejected", 0, "rejected", "v0001")
    assert result.reason is not None
    assert result.reason.startswith("sanity check: 2 of 2 generations unusable")
    manifest = registry.manifest("adapter", ADAPTER, "v0001")
    assert (manifest.status, manifest.dataset_version, manifest.base_model) == ("rejected", version, BASE)
    assert manifest.base_model_sha256 == base.manifest.content_sha256
    assert manifest.metrics["sanity_passed"] is False
    assert all(entry["problem"] for entry in manifest.metrics["sanity"])
    assert set(manifest.metrics["losses"]) == {"sft", "dpo"}
    assert manifest.config == swift_args.training_config(s)
    aliases = registry.aliases("adapter", ADAPTER)
    assert (aliases.production, aliases.canary) == (None, None)
    run_dir = Path(result.run_dir)
    assert json.loads((run_dir / "result.json").read_text())["outcome"] == "rejected"
    log = (run_dir / "trainer.log").read_text()
    assert "stage rlhf: done" in log
    assert f"checkpoint {base.path}" in log
    assert not (run_dir / SCRATCH).exists()
    held_out = data.read_pairs(run_dir / "held_out.jsonl")
    assert len(held_out) == manifest.metrics["candidate_eval"]["pairs"] > 0
    published = registry.version_dir("adapter", ADAPTER, "v0001")
    assert not torch.allclose(logits(tiny_model, None), logits(tiny_model, published))
