"""Why a training run stops early, each with the process exit code the CLI reports it with.

0 is not an error (published, rejected by the gate, or already built); 2: bad settings or
arguments, or an environment that cannot run them (no CUDA for GPTQ, no bitsandbytes for QLoRA);
3: no dataset version or not enough data in it; 1: a stage failed (ms-swift raised, a loss was
not finite, an artifact is missing). None of them leaves anything in the registry.
"""

from __future__ import annotations

from typing import ClassVar

from bailu.common.errors import BailuError, InternalError, InvalidRequest


class TrainerError(BailuError):
    """A run that ends without publishing; `message` is the one-line reason the CLI prints."""

    exit_code: ClassVar[int] = 1


class BadSettings(TrainerError, InvalidRequest):
    """The settings or command-line arguments are invalid, or this machine cannot run them."""

    exit_code = 2


class NotEnoughData(TrainerError, InvalidRequest):
    """No sealed dataset version, an unreadable one, or fewer preference pairs than `min_pairs`."""

    exit_code = 3


class StageFailed(TrainerError, InternalError):
    """A stage raised or produced something unusable; `stage` names it."""

    exit_code = 1

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage {stage} failed: {message}")
        self.stage = stage


class NonFiniteLoss(ArithmeticError):
    """Raised from inside ms-swift's training loop when a logged loss is NaN or infinite, to stop at once."""
