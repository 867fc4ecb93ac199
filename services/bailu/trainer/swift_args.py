"""ms-swift command lines built from the settings (pure: no I/O, no ms-swift import).

The same lists work for `swift sft|rlhf|export ...` and for the in-process entry points
(`swift.pipelines.sft_main(argv)` and friends) the trainer calls. Every run is offline:
`--use_hf true` with local paths (and HF_HUB_OFFLINE set by the runner) and `--check_model false`
(the check would look the model up on a hub).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bailu.trainer.settings import QuantMethod, RlhfType, TrainerSettings

# Settings that say where things are or how a result is rolled out, not what is trained: they are
# left out of a version's recorded config, so that moving the data or changing the canary weight
# does not make the same build look new. Every other field (including ones added later) is config.
OPERATIONAL_FIELDS = frozenset(
    {
        "log_level",
        "dataset_dir",
        "dataset_version",
        "registry_dir",
        "redis_url",
        "work_dir",
        "model_path",
        "adapter_name",
        "canary_weight",
        "min_pairs",
    }
)
# Preference types that need a reference model: with LoRA it is the base plus the SFT adapter.
REFERENCE_TYPES = frozenset({RlhfType.DPO, RlhfType.KTO})
QUANT_BITS = 4


def training_config(settings: TrainerSettings) -> dict[str, Any]:
    """The training-relevant settings as plain JSON (what a registry version records and is matched on)."""
    data = settings.model_dump(mode="json")
    return {key: data[key] for key in sorted(data) if key not in OPERATIONAL_FIELDS}


def _steps(max_steps: int, epochs: float) -> list[str]:
    return ["--max_steps", str(max_steps)] if max_steps > 0 else ["--num_train_epochs", repr(epochs)]


def target_modules(value: str) -> list[str]:
    """`all-linear`, or module names separated by spaces or commas."""
    return [part for part in re.split(r"[\s,]+", value) if part]


def _common(
    settings: TrainerSettings, model_dir: Path, output_dir: Path, dataset: Path, callbacks: list[str]
) -> list[str]:
    args = [
        "--model", str(model_dir),
        "--model_type", settings.model_type,
        "--template", settings.template,
        "--use_hf", "true",
        "--check_model", "false",
        "--tuner_type", "lora",
        "--lora_rank", str(settings.lora_rank),
        "--lora_alpha", str(settings.lora_alpha),
        "--lora_dropout", repr(settings.lora_dropout),
        "--target_modules", *target_modules(settings.target_modules),
        "--dataset", str(dataset),
        "--split_dataset_ratio", "0",
        "--max_length", str(settings.max_length),
        "--truncation_strategy", "left",
        "--per_device_train_batch_size", str(settings.batch_size),
        "--gradient_accumulation_steps", str(settings.grad_accum),
        "--seed", str(settings.seed),
        "--data_seed", str(settings.seed),
        "--output_dir", str(output_dir),
        "--logging_steps", "1",
        "--logging_nan_inf_filter", "false",
        "--save_only_model", "true",
        "--save_total_limit", "1",
        "--report_to", "none",
        "--dataloader_num_workers", "0",
    ]  # fmt: skip
    if settings.quant_bits == QUANT_BITS:
        args += ["--quant_method", "bnb", "--quant_bits", str(QUANT_BITS)]
    if callbacks:
        args += ["--callbacks", *callbacks]
    return args


def sft_args(
    settings: TrainerSettings, model_dir: Path, dataset: Path, output_dir: Path, callbacks: Sequence[str] = ()
) -> list[str]:
    """`swift sft`: LoRA (QLoRA with quant_bits 4) on the SFT file; extra_sft_args last, so they win."""
    return [
        *_common(settings, model_dir, output_dir, dataset, list(callbacks)),
        "--learning_rate", repr(settings.learning_rate),
        *_steps(settings.max_steps, settings.epochs),
        *settings.extra_sft_args,
    ]  # fmt: skip


def rlhf_args(
    settings: TrainerSettings,
    model_dir: Path,
    dataset: Path,
    output_dir: Path,
    sft_adapter: Path | None,
    callbacks: Sequence[str] = (),
) -> list[str]:
    """`swift rlhf`: continues training the SFT adapter (`--adapters`); DPO and KTO also take it as their
    reference (`--ref_adapters`), so that they measure the change from the SFT model, not from the base.
    Without an SFT adapter a new LoRA is trained and the reference is the base model."""
    if settings.rlhf_type == RlhfType.NONE:
        raise ValueError("rlhf_type none has no preference stage")
    args = [
        "--rlhf_type", settings.rlhf_type.value,
        *_common(settings, model_dir, output_dir, dataset, list(callbacks)),
        "--learning_rate", repr(settings.rlhf_learning_rate),
        "--beta", repr(settings.beta),
        *_steps(settings.rlhf_max_steps, settings.rlhf_epochs),
    ]  # fmt: skip
    if sft_adapter is not None:
        args += ["--adapters", str(sft_adapter)]
        if settings.rlhf_type in REFERENCE_TYPES:
            args += ["--ref_adapters", str(sft_adapter)]
    return [*args, *settings.extra_rlhf_args]


def _merge_lora(settings: TrainerSettings, model_dir: Path, adapter_dir: Path) -> list[str]:
    """The `swift export` arguments that fold the adapter into the base weights."""
    return [
        "--model", str(model_dir),
        "--model_type", settings.model_type,
        "--template", settings.template,
        "--use_hf", "true",
        "--adapters", str(adapter_dir),
        "--merge_lora", "true",
    ]  # fmt: skip


def merge_args(settings: TrainerSettings, model_dir: Path, adapter_dir: Path, output_dir: Path) -> list[str]:
    """`swift export --merge_lora true`: base weights with the adapter folded in."""
    return [*_merge_lora(settings, model_dir, adapter_dir), "--output_dir", str(output_dir)]


def quantize_args(
    settings: TrainerSettings, model_dir: Path, adapter_dir: Path, calibration: Path, output_dir: Path
) -> list[str]:
    """`swift export --quant_method gptq|awq --quant_bits 4`: merges the adapter, then quantises the merged
    weights with the training SFT file as calibration data (GPU only)."""
    if settings.quantize == QuantMethod.NONE:
        raise ValueError("quantize is none")
    return [
        *_merge_lora(settings, model_dir, adapter_dir),
        "--quant_method", settings.quantize.value,
        "--quant_bits", str(QUANT_BITS),
        "--dataset", str(calibration),
        "--max_length", str(settings.max_length),
        "--output_dir", str(output_dir),
    ]  # fmt: skip
