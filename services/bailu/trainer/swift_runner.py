"""Runs ms-swift's pipelines in this process (`sft_main`, `rlhf_main`, `export_main`) and turns whatever
they raise into `StageFailed`.

In-process rather than `swift sft` subprocesses: the libraries are imported once per run (seconds), and
progress comes from a trainer callback registered in ms-swift's callback table for the duration of a call.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bailu.common.logging import reclaim_logging
from bailu.trainer.errors import NonFiniteLoss, StageFailed
from bailu.trainer.progress import Progress, check_finite

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The last logged value of each is kept in a stage's metrics (rewards/*: preference stages only).
_LOG_KEYS = ("train_loss", "nll_loss", "rewards/accuracies", "rewards/margins", "grad_norm")


def offline_environment() -> None:
    """No hub is ever contacted: models and datasets are local paths."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("USE_HF", "1")


def import_swift() -> Any:
    """Import ms-swift's pipelines (slow: seconds) and give logging back to the JSON handler."""
    offline_environment()
    import swift.pipelines

    reclaim_logging("swift", "modelscope", "transformers", "datasets")
    return swift.pipelines


@dataclass(slots=True)
class TrainingRun:
    """What one training stage produced: its last checkpoint and a summary of its logs."""

    checkpoint: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            **self.final,
        }


@contextlib.contextmanager
def _progress_callback(progress: Progress) -> Iterator[str]:
    """Register a callback class under a fresh name in ms-swift's table; yields the name for `--callbacks`."""
    from swift.callbacks import callbacks_map
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self, args: Any, trainer: Any) -> None:
            self.args = args
            self.trainer = trainer

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            progress.step(int(state.global_step), int(state.max_steps), logs or {})

    name = f"bailu_progress_{uuid.uuid4().hex[:8]}"
    callbacks_map[name] = ProgressCallback
    try:
        yield name
    finally:
        callbacks_map.pop(name, None)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    if isinstance(exc, SystemExit):
        return f"ms-swift rejected its arguments (exit {exc.code}); see the log above"
    return f"{type(exc).__name__}: {detail[:300]}" if detail else type(exc).__name__


def call(stage: str, entry: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Call an ms-swift entry point with stdout sent to stderr; any failure becomes StageFailed."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return entry(argv)
    except NonFiniteLoss as exc:
        raise StageFailed(stage, f"training diverged: {exc}") from exc
    except (Exception, SystemExit) as exc:
        log.error("ms-swift failed", exc_info=True, extra={"stage": stage})
        raise StageFailed(stage, _reason(exc)) from exc


def train(stage: str, entry_name: str, build_argv: Callable[[list[str]], list[str]], progress: Progress) -> TrainingRun:
    """Run `sft_main` or `rlhf_main` with progress reporting; checks the checkpoint and the losses."""
    pipelines = import_swift()
    entry = getattr(pipelines, entry_name)
    with _progress_callback(progress) as callback:
        result = call(stage, entry, build_argv([callback]))
    return summarise(stage, result if isinstance(result, dict) else {})


def summarise(stage: str, result: dict[str, Any]) -> TrainingRun:
    """Check what a training entry point returned: a checkpoint with adapter files, finite losses."""
    checkpoint = result.get("last_model_checkpoint")
    if not checkpoint:
        raise StageFailed(stage, "ms-swift saved no checkpoint (no training steps?)")
    path = Path(checkpoint).resolve()
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (path / name).is_file()]
    if missing:
        raise StageFailed(stage, f"checkpoint {path} lacks {', '.join(missing)}")
    history = [entry for entry in result.get("log_history", []) if isinstance(entry, dict)]
    losses: list[float] = []
    final: dict[str, float] = {}
    for entry in history:
        try:
            check_finite(entry, int(entry.get("step", 0)))
        except NonFiniteLoss as exc:
            raise StageFailed(stage, f"training diverged: {exc}") from exc
        if "loss" in entry:
            losses.append(float(entry["loss"]))
        for key in _LOG_KEYS:
            value = entry.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                final[key.replace("/", "_")] = float(value)
    return TrainingRun(path, int(result.get("global_step") or 0), losses, final)
