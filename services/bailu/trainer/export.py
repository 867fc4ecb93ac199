"""The export stage: the adapter as published, and optionally merged or quantised weights.

A training checkpoint also holds the trainer's state (optimizer, scheduler, RNG, trainer_state.json,
a model card); a published adapter holds only what PEFT and ms-swift read to load it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bailu.common.checkpoint import is_checkpoint
from bailu.trainer import swift_args, swift_runner
from bailu.trainer.errors import StageFailed
from bailu.trainer.settings import QuantMethod, TrainerSettings

# PEFT reads the first two; ms-swift's `Swift.from_pretrained` reads additional_config.json when present,
# and `swift infer|export --adapters DIR` reads args.json (template, model type) from the adapter.
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
OPTIONAL_FILES = ("additional_config.json", "args.json")


def adapter(checkpoint: Path, out_dir: Path) -> Path:
    """Copy the loadable adapter files of a checkpoint into `out_dir`."""
    missing = [name for name in REQUIRED_FILES if not (checkpoint / name).is_file()]
    if missing:
        raise StageFailed("export", f"{checkpoint} lacks {', '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*REQUIRED_FILES, *OPTIONAL_FILES):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out_dir / name)
    return out_dir


def merged(settings: TrainerSettings, model_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Base weights with the adapter merged in (`swift export --merge_lora true`)."""
    pipelines = swift_runner.import_swift()
    swift_runner.call("export", pipelines.export_main, swift_args.merge_args(settings, model_dir, adapter_dir, out_dir))
    if not is_checkpoint(out_dir):
        raise StageFailed("export", f"ms-swift wrote no merged checkpoint to {out_dir}")
    return out_dir


def quantized(settings: TrainerSettings, model_dir: Path, adapter_dir: Path, calibration: Path, out_dir: Path) -> Path:
    """Merged weights quantised with GPTQ or AWQ (4 bits); the caller has checked that CUDA is available."""
    if settings.quantize == QuantMethod.NONE:
        raise ValueError("quantize is none")
    pipelines = swift_runner.import_swift()
    argv = swift_args.quantize_args(settings, model_dir, adapter_dir, calibration, out_dir)
    swift_runner.call("export", pipelines.export_main, argv)
    if not is_checkpoint(out_dir):
        raise StageFailed("export", f"ms-swift wrote no quantised checkpoint to {out_dir}")
    return out_dir


def quantized_name(adapter_name: str, method: QuantMethod) -> str:
    return f"{adapter_name}-{method.value}-int{swift_args.QUANT_BITS}"
