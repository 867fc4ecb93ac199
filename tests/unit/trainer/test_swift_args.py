"""ms-swift command lines built from the settings, and the config a registry version records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bailu.trainer import swift_args
from bailu.trainer.settings import TrainerSettings

MODEL = Path("/models/base")
DATA = Path("/run/data/sft.jsonl")
OUT = Path("/run/sft")
SFT_ADAPTER = Path("/run/sft/v0/checkpoint-3")


pytestmark = pytest.mark.usefixtures("clean_bailu_env")


def settings(**overrides: Any) -> TrainerSettings:
    return TrainerSettings(**overrides)


def value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def test_sft_arguments_carry_the_lora_and_optimiser_settings() -> None:
    s = settings(lora_rank=4, lora_alpha=8, lora_dropout=0.1, learning_rate=2e-4, batch_size=2, grad_accum=3,
                 max_length=128, seed=7, max_steps=5, template="chatml", model_type="llama")  # fmt: skip
    argv = swift_args.sft_args(s, MODEL, DATA, OUT, ["progress_cb"])
    expected = {
        "--model": str(MODEL), "--model_type": "llama", "--template": "chatml", "--tuner_type": "lora",
        "--lora_rank": "4", "--lora_alpha": "8", "--lora_dropout": "0.1", "--learning_rate": "0.0002",
        "--per_device_train_batch_size": "2", "--gradient_accumulation_steps": "3", "--max_length": "128",
        "--seed": "7", "--data_seed": "7", "--max_steps": "5", "--dataset": str(DATA), "--output_dir": str(OUT),
        "--use_hf": "true", "--check_model": "false", "--split_dataset_ratio": "0", "--callbacks": "progress_cb",
        "--logging_nan_inf_filter": "false",
    }  # fmt: skip
    assert {flag: value(argv, flag) for flag in expected} == expected
    assert "--num_train_epochs" not in argv
    assert "--quant_method" not in argv


def test_epochs_are_used_when_max_steps_is_zero() -> None:
    argv = swift_args.sft_args(settings(epochs=2.5, max_steps=0), MODEL, DATA, OUT)
    assert value(argv, "--num_train_epochs") == "2.5"
    assert "--max_steps" not in argv
    rlhf = swift_args.rlhf_args(settings(rlhf_epochs=3, rlhf_max_steps=0), MODEL, DATA, OUT, None)
    assert value(rlhf, "--num_train_epochs") == "3.0"


def test_qlora_adds_bitsandbytes_4_bit() -> None:
    argv = swift_args.sft_args(settings(quant_bits=4), MODEL, DATA, OUT)
    assert (value(argv, "--quant_method"), value(argv, "--quant_bits")) == ("bnb", "4")


def test_target_modules_accept_spaces_or_commas() -> None:
    argv = swift_args.sft_args(settings(target_modules="q_proj, v_proj o_proj"), MODEL, DATA, OUT)
    start = argv.index("--target_modules") + 1
    assert argv[start : start + 4] == ["q_proj", "v_proj", "o_proj", "--dataset"]


def test_extra_arguments_come_last_so_they_override() -> None:
    s = settings(extra_sft_args="--learning_rate 1 --warmup_ratio 0.1", extra_rlhf_args=["--rpo_alpha", "0.5"])
    assert swift_args.sft_args(s, MODEL, DATA, OUT)[-4:] == ["--learning_rate", "1", "--warmup_ratio", "0.1"]
    assert swift_args.rlhf_args(s, MODEL, DATA, OUT, SFT_ADAPTER)[-2:] == ["--rpo_alpha", "0.5"]


@pytest.mark.parametrize(("rlhf_type", "reference"), [("orpo", False), ("simpo", False), ("dpo", True), ("kto", True)])
def test_preference_stage_continues_from_the_sft_adapter(rlhf_type: str, reference: bool) -> None:
    s = settings(rlhf_type=rlhf_type, rlhf_learning_rate=3e-5, beta=0.2, rlhf_max_steps=4)
    argv = swift_args.rlhf_args(s, MODEL, DATA, OUT, SFT_ADAPTER)
    assert value(argv, "--rlhf_type") == rlhf_type
    assert value(argv, "--adapters") == str(SFT_ADAPTER)
    assert (value(argv, "--learning_rate"), value(argv, "--beta"), value(argv, "--max_steps")) == ("3e-05", "0.2", "4")
    assert ("--ref_adapters" in argv) == reference
    if reference:
        assert value(argv, "--ref_adapters") == str(SFT_ADAPTER)


def test_without_sft_the_preference_stage_trains_a_new_adapter() -> None:
    argv = swift_args.rlhf_args(settings(rlhf_type="dpo"), MODEL, DATA, OUT, None)
    assert "--adapters" not in argv
    assert "--ref_adapters" not in argv
    with pytest.raises(ValueError, match="no preference stage"):
        swift_args.rlhf_args(settings(rlhf_type="none"), MODEL, DATA, OUT, None)


def test_export_commands() -> None:
    adapter, calibration, out = Path("/run/adapter"), Path("/run/data/sft.jsonl"), Path("/run/out")
    merge = swift_args.merge_args(settings(), MODEL, adapter, out)
    assert (value(merge, "--adapters"), value(merge, "--merge_lora"), value(merge, "--output_dir")) == (
        str(adapter), "true", str(out))  # fmt: skip
    quant = swift_args.quantize_args(settings(quantize="awq"), MODEL, adapter, calibration, out)
    assert (value(quant, "--quant_method"), value(quant, "--quant_bits"), value(quant, "--dataset")) == (
        "awq", "4", str(calibration))  # fmt: skip
    with pytest.raises(ValueError, match="quantize is none"):
        swift_args.quantize_args(settings(), MODEL, adapter, calibration, out)


def test_config_holds_what_is_trained_not_where_things_are() -> None:
    s = settings(dataset_dir=Path("/a"), registry_dir=Path("/b"), work_dir=Path("/c"), model_path=Path("/d"),
                 redis_url="redis://x", canary_weight=0.3, min_pairs=5, lora_rank=4, rlhf_type="dpo",
                 extra_sft_args="--a 1")  # fmt: skip
    config = swift_args.training_config(s)
    assert config["lora_rank"] == 4
    assert config["rlhf_type"] == "dpo"
    assert config["extra_sft_args"] == ["--a", "1"]
    assert config["base_model"] == s.base_model
    assert not swift_args.OPERATIONAL_FIELDS & config.keys()
    assert set(config) | swift_args.OPERATIONAL_FIELDS == set(TrainerSettings.model_fields)
    assert all(not isinstance(v, Path) and "/" not in str(v) for v in config.values())
    moved = settings(dataset_dir=Path("/elsewhere"), canary_weight=0.9, lora_rank=4, rlhf_type="dpo",
                     extra_sft_args="--a 1")  # fmt: skip
    assert swift_args.training_config(moved) == config
    assert swift_args.training_config(settings(lora_rank=8, rlhf_type="dpo", extra_sft_args="--a 1")) != config
