"""Each dialect's launch command line, adapter selection and adapter calls, from one worker configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bailu.common.errors import InvalidRequest, ModelNotFound
from bailu.worker.engines.adapters import engine_adapter_name
from bailu.worker.engines.server import openai_http as oai
from bailu.worker.engines.server.adapters import check_adapter
from bailu.worker.engines.server.dialects import DIALECTS, LMDEPLOY, SGLANG, SWIFT, VLLM, Dialect, LaunchConfig
from bailu.worker.engines.server.http import HttpEngine
from bailu.worker.settings import EngineKind, WorkerSettings
from tests.unit.engines.conftest import sample_json

CONFIG = LaunchConfig(
    model_path=Path("/models/base/Qwen2.5-7B-Instruct"),
    served_name="qwen2.5-7b-instruct",
    host="127.0.0.1",
    port=31337,
    max_model_len=8192,
    max_batch_size=16,
    tensor_parallel_size=2,
    gpu_memory_utilization=0.85,
    max_loras=3,
    max_lora_rank=32,
    adapters={"poet-3f2a": "/models/adapters/poet/v3"},
    model_type="qwen2",
    template="qwen2_5",
)


def flag(argv: list[str], name: str) -> str:
    """The value following `name` (which must occur once)."""
    assert argv.count(name) == 1, f"{name} in {argv}"
    return argv[argv.index(name) + 1]


def test_vllm_command_line() -> None:
    argv = VLLM.argv(CONFIG)
    assert argv[:3] == ["vllm", "serve", "/models/base/Qwen2.5-7B-Instruct"]
    assert flag(argv, "--served-model-name") == CONFIG.served_name
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", "31337")
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--gpu-memory-utilization") == "0.85"
    assert flag(argv, "--max-model-len") == "8192"
    assert flag(argv, "--max-num-seqs") == "16"
    assert "--enable-lora" in argv
    assert (flag(argv, "--max-loras"), flag(argv, "--max-lora-rank")) == ("3", "32")
    assert flag(argv, "--lora-modules") == "poet-3f2a=/models/adapters/poet/v3"
    assert VLLM.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_sglang_command_line() -> None:
    argv = SGLANG.argv(CONFIG)
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    assert flag(argv, "--model-path") == str(CONFIG.model_path)
    assert flag(argv, "--served-model-name") == CONFIG.served_name
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", "31337")
    assert flag(argv, "--tp-size") == "2"
    assert flag(argv, "--mem-fraction-static") == "0.85"
    assert flag(argv, "--context-length") == "8192"
    assert flag(argv, "--max-running-requests") == "16"
    assert "--enable-metrics" in argv  # SGLang exports nothing without it
    assert (flag(argv, "--max-loras-per-batch"), flag(argv, "--max-lora-rank")) == ("3", "32")
    # Adapters loaded later may target any module: without this SGLang infers the modules from the start list.
    assert flag(argv, "--lora-target-modules") == "all"
    assert flag(argv, "--lora-paths") == "poet-3f2a=/models/adapters/poet/v3"


def test_lmdeploy_command_line() -> None:
    argv = LMDEPLOY.argv(CONFIG)
    assert argv[:4] == ["lmdeploy", "serve", "api_server", str(CONFIG.model_path)]
    assert flag(argv, "--backend") == "pytorch"  # TurboMind serves no LoRA
    assert flag(argv, "--model-name") == CONFIG.served_name
    assert (flag(argv, "--server-name"), flag(argv, "--server-port")) == ("127.0.0.1", "31337")
    assert flag(argv, "--tp") == "2"
    assert flag(argv, "--cache-max-entry-count") == "0.85"
    assert flag(argv, "--session-len") == "8192"
    assert flag(argv, "--max-batch-size") == "16"
    # --adapters takes every following word: it comes last, before any extra arguments.
    assert argv[argv.index("--adapters") :] == ["--adapters", "poet-3f2a=/models/adapters/poet/v3"]


def test_swift_command_line_runs_the_workers_own_ms_swift() -> None:
    argv = SWIFT.argv(CONFIG)
    assert argv[:3] == [sys.executable, "-m", "swift.cli.deploy"]
    assert flag(argv, "--model") == str(CONFIG.model_path)
    assert flag(argv, "--infer_backend") == "transformers"
    assert flag(argv, "--served_model_name") == CONFIG.served_name
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", "31337")
    assert (flag(argv, "--model_type"), flag(argv, "--template")) == ("qwen2", "qwen2_5")
    assert flag(argv, "--max_length") == "8192"
    assert flag(argv, "--max_batch_size") == "16"
    assert flag(argv, "--adapters") == "poet-3f2a=/models/adapters/poet/v3"
    assert SWIFT.env["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("dialect", list(DIALECTS.values()), ids=list(DIALECTS))
def test_executable_override_and_extra_args(dialect: Dialect) -> None:
    argv = dialect.argv(CONFIG, ("/opt/engine/bin/serve",), ("--enforce-eager", "--seed", "7"))
    assert argv[0] == "/opt/engine/bin/serve"
    assert argv[-3:] == ["--enforce-eager", "--seed", "7"]
    assert argv[1:-3] == dialect.build_args(CONFIG)


@pytest.mark.parametrize("dialect", list(DIALECTS.values()), ids=list(DIALECTS))
def test_without_loras_no_lora_flags_are_passed(dialect: Dialect) -> None:
    config = LaunchConfig(**{**{f: getattr(CONFIG, f) for f in CONFIG.__dataclass_fields__}, "max_loras": 0})
    argv = dialect.argv(config)
    assert not [a for a in argv if "lora" in a.lower() or a == "--adapters"]


def test_adapter_selection() -> None:
    assert VLLM.request_model("base", "poet-3f2a") == "poet-3f2a"
    assert SGLANG.request_model("base", "poet-3f2a") == "base:poet-3f2a"
    assert LMDEPLOY.request_model("base", "poet-3f2a") == "poet-3f2a"
    assert SWIFT.request_model("base", "poet-3f2a") == "poet-3f2a"
    assert all(d.request_model("base", "") == "base" for d in DIALECTS.values())


@pytest.mark.parametrize("dialect", [VLLM, SGLANG], ids=["vllm", "sglang"])
def test_runtime_adapter_calls_match_the_recorded_requests(dialect: Dialect) -> None:
    recorded = sample_json(dialect.kind, "adapters.json")
    load, unload = recorded["load"], recorded["unload"]
    assert dialect.load_adapter_path == load["path"]
    assert dialect.unload_adapter_path == unload["path"]
    assert oai.adapter_request(load["request"]["lora_name"], load["request"]["lora_path"]) == load["request"]
    assert oai.adapter_request(unload["request"]["lora_name"]) == unload["request"]


def test_restart_engines_say_so_in_their_capabilities() -> None:
    for dialect in (LMDEPLOY, SWIFT):
        assert dialect.load_adapter_path is None
        assert not dialect.capabilities.runtime_adapter_loading
        assert dialect.capabilities.adapter_load_restarts_engine
    for dialect in (VLLM, SGLANG):
        assert dialect.capabilities.runtime_adapter_loading
        assert not dialect.capabilities.adapter_load_restarts_engine
        assert dialect.capabilities.mixed_adapter_batches
    assert not SWIFT.capabilities.native_metrics
    assert SWIFT.metrics_path is None
    assert not SWIFT.capabilities.raw_completions  # ms-swift serves a prompt as one user turn


def test_engine_adapter_names_differ_by_path_and_are_safe() -> None:
    a = engine_adapter_name("poet@v3", "/adapters/poet/v3")
    assert a == engine_adapter_name("poet@v3", "/adapters/poet/v3")
    assert a != engine_adapter_name("poet@v3", "/adapters/poet/v4")
    assert a.startswith("poet_v3-")
    assert ":" not in engine_adapter_name("a:b", "/x")  # SGLang splits "model:adapter" on the colon


def test_adapter_checks(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        check_adapter(str(tmp_path / "missing"), 64)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 128, "peft_type": "LORA"}))
    with pytest.raises(InvalidRequest, match="rank 128"):
        check_adapter(str(tmp_path), 64)
    check_adapter(str(tmp_path), 128)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidRequest, match="not JSON"):
        check_adapter(str(tmp_path), 128)


def test_engine_built_from_worker_settings(tmp_path: Path) -> None:
    settings = WorkerSettings(
        engine=EngineKind.VLLM,
        model_name="qwen",
        model_path=tmp_path,
        engine_args="--enforce-eager --dtype 'bfloat16'",
        engine_executable="/venv/bin/vllm serve",
        adapters={"poet": tmp_path / "poet"},
        max_batch_size=8,
    )
    engine = HttpEngine.from_settings(settings)
    argv = engine.server.argv()
    assert argv[:3] == ["/venv/bin/vllm", "serve", str(tmp_path)]
    assert argv[-3:] == ["--enforce-eager", "--dtype", "bfloat16"]
    assert flag(argv, "--port") == str(engine.config.port)
    assert engine.config.port > 0
    # Start-up adapters are launched under their engine names and listed by the worker at once.
    assert flag(argv, "--lora-modules") == f"{engine_adapter_name('poet', str(tmp_path / 'poet'))}={tmp_path / 'poet'}"
    assert [card.name for card in engine.models()] == ["qwen", "poet"]
    assert engine.kind == "vllm"
    assert engine.capacity == 8
    assert engine.server.supervisor.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_without_loras_the_engine_reports_no_adapters(tmp_path: Path) -> None:
    engine = HttpEngine.from_settings(WorkerSettings(engine="sglang", model_path=tmp_path, max_loras=0))
    assert not engine.capabilities.adapters
    assert engine.capabilities.native_metrics
