"""Settings of the trainer (environment prefix `BAILU_TRAINER_`; command-line flags override them)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from bailu.common.settings import ServiceSettings


class RlhfType(enum.StrEnum):
    """The preference-alignment stage after SFT (`swift rlhf --rlhf_type`); none skips it."""

    ORPO = "orpo"
    DPO = "dpo"
    SIMPO = "simpo"
    KTO = "kto"
    NONE = "none"


class QuantMethod(enum.StrEnum):
    """Post-training quantisation of merged weights at export (GPU only)."""

    NONE = "none"
    GPTQ = "gptq"
    AWQ = "awq"


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BAILU_TRAINER_", extra="ignore", frozen=True)

    # Where things are.
    dataset_dir: Path = Field(Path("datasets"), description="Directory of the collector's dataset versions.")
    dataset_version: str = Field("", description="Dataset version to train on (empty: the newest sealed one).")
    registry_dir: Path = Field(Path("registry"), description="Root of the model registry (shared storage).")
    redis_url: str = Field(
        "",
        description="Redis holding the registry's index and change events (empty: files only; workers then "
        "notice new versions at their next registry poll, and the gateway not at all until the index is rebuilt).",
    )
    work_dir: Path = Field(Path("trainer-runs"), description="Scratch directory for checkpoints of a run.")
    # What is trained.
    base_model: str = Field(
        "smollm2-135m-instruct",
        min_length=1,
        description="Name of the base model the workers serve (as in BAILU_WORKER_MODEL_NAME).",
    )
    model_path: Path | None = Field(None, description="Local Hugging Face checkpoint directory of the base model.")
    model_type: str = Field("llama", description="ms-swift model_type of the checkpoint.")
    template: str = Field("chatml", description="ms-swift chat template of the model.")
    adapter_name: str = Field(
        "bailu-poet", min_length=1, description="Registry name of the adapter this trainer produces."
    )
    # Data.
    min_pairs: int = Field(
        50, ge=1, description="Fewest preference pairs in the dataset version; fewer refuses the run."
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of preference pairs held out for the evaluation gate (never trained on)."
    )
    eval_max_pairs: int = Field(200, ge=1, description="At most this many held-out pairs are evaluated.")
    max_length: int = Field(1024, ge=32, description="Longest training sequence in tokens (longer ones are truncated).")
    # SFT with LoRA.
    sft: bool = Field(True, description="Run the SFT stage (on SFT examples and the chosen side of pairs).")
    lora_rank: int = Field(64, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(128, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str = Field("all-linear", description="LoRA target modules (ms-swift --target_modules).")
    quant_bits: int = Field(
        0, description="4 trains QLoRA (bitsandbytes 4-bit base weights, needs bitsandbytes); 0 trains plain LoRA."
    )
    learning_rate: float = Field(1e-4, gt=0, description="SFT learning rate.")
    epochs: float = Field(1.0, gt=0, description="SFT epochs (ignored when max_steps is set).")
    max_steps: int = Field(0, ge=0, description="SFT optimiser steps (0: run the epochs).")
    batch_size: int = Field(1, ge=1, description="Per-device batch size of both stages.")
    grad_accum: int = Field(16, ge=1, description="Gradient accumulation steps of both stages.")
    # Preference alignment.
    rlhf_type: RlhfType = Field(RlhfType.ORPO, description="Preference stage: orpo, dpo, simpo, kto or none.")
    rlhf_learning_rate: float = Field(5e-5, gt=0, description="Learning rate of the preference stage.")
    rlhf_epochs: float = Field(1.0, gt=0, description="Preference-stage epochs (ignored when rlhf_max_steps is set).")
    rlhf_max_steps: int = Field(0, ge=0, description="Preference-stage optimiser steps (0: run the epochs).")
    beta: float = Field(0.1, gt=0, description="beta of ORPO/DPO/SimPO/KTO.")
    # Evaluation gate.
    gate_margin: float = Field(
        0.02,
        ge=-1,
        le=1,
        description="The candidate's held-out preference accuracy must exceed production's by at least this much.",
    )
    sanity_prompts: int = Field(
        4,
        ge=0,
        description="Held-out prompts the candidate and the baseline answer for the sanity check (the candidate "
        "fails it with more unusable answers than the baseline, or none usable).",
    )
    sanity_max_tokens: int = Field(64, ge=1, description="Tokens generated per sanity prompt.")
    # Export and publish.
    merge: bool = Field(False, description="Also export merged weights (swift export --merge_lora).")
    quantize: QuantMethod = Field(QuantMethod.NONE, description="Quantise merged weights: gptq or awq (GPU only).")
    canary_weight: float = Field(0.1, ge=0, le=1, description="Share of the alias's traffic the new canary gets.")
    seed: int = Field(42, description="Seed of the split, the training and the sanity generations.")
    extra_sft_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra `swift sft` arguments, space-separated (passed through)."
    )
    extra_rlhf_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra `swift rlhf` arguments, space-separated (passed through)."
    )

    @field_validator("quant_bits")
    @classmethod
    def _bits(cls, value: int) -> int:
        if value not in (0, 4):
            raise ValueError("quant_bits must be 0 (LoRA) or 4 (QLoRA)")
        return value

    @field_validator("extra_sft_args", "extra_rlhf_args", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return value.split()
        return value
