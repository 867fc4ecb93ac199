"""The command line: a flag per settings field, flags over environment, clear errors for bad values."""

from __future__ import annotations

import pytest

from bailu.trainer import cli
from bailu.trainer.errors import BadSettings
from bailu.trainer.settings import RlhfType, TrainerSettings

pytestmark = pytest.mark.usefixtures("clean_bailu_env")


def parse(*argv: str) -> dict[str, object]:
    return vars(cli.build_parser().parse_args(list(argv)))


def test_every_settings_field_has_a_kebab_case_flag() -> None:
    parser = cli.build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    for name in TrainerSettings.model_fields:
        assert "--" + name.replace("_", "-") in flags
    assert "--json" in flags


def test_flags_override_the_environment_and_unset_flags_leave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_TRAINER_LORA_RANK", "32")
    monkeypatch.setenv("BAILU_TRAINER_RLHF_TYPE", "dpo")
    args = parse("--lora-rank", "4", "--sft", "false", "--extra-sft-args", "--warmup_ratio 0.1", "--json")
    assert args.pop("json") is True
    settings = cli.load_settings(args)
    assert settings.lora_rank == 4
    assert settings.sft is False
    assert settings.rlhf_type == RlhfType.DPO
    assert settings.extra_sft_args == ["--warmup_ratio", "0.1"]


def test_bad_values_name_every_field() -> None:
    with pytest.raises(BadSettings) as caught:
        cli.load_settings(parse("--lora-rank", "0", "--rlhf-type", "ppo", "--quant-bits", "8"))
    message = caught.value.message
    assert message.startswith("bad settings: ")
    for field in ("lora_rank", "rlhf_type", "quant_bits"):
        assert field in message
    assert "\n" not in message
    assert caught.value.exit_code == 2


def test_a_bad_environment_value_is_reported_like_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_TRAINER_EVAL_FRACTION", "1.5")
    with pytest.raises(BadSettings, match="eval_fraction"):
        cli.load_settings(parse())


def test_unknown_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("--no-such-flag", "1")
    assert caught.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_main_reports_bad_settings_with_exit_2_and_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--batch-size", "zero", "--json"]) == 2
    out, err = capsys.readouterr()
    assert err.strip().count("\n") == 0
    assert err.startswith("error: bad settings: batch_size")
    assert '"exit_code": 2' in out
