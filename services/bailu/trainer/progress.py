"""Progress lines on stdout (and in the run's log file): what an operator watching `kubectl logs` reads.

Third-party output (ms-swift, transformers, tqdm) is sent to stderr while a stage runs, so stdout
carries only these lines: a stage's start and end with its wall time, and each optimiser step with
step/total, loss and elapsed time (at most one step line per `step_interval_s`, plus the first and
the last).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from bailu.trainer.errors import NonFiniteLoss

PREFIX = "[trainer]"


class Progress:
    def __init__(
        self,
        out: TextIO,
        *,
        log_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        step_interval_s: float = 5.0,
    ) -> None:
        self.out = out
        self.log_path = log_path
        self.clock = clock
        self.step_interval_s = step_interval_s
        self.times: dict[str, float] = {}
        self._stage = ""
        self._stage_start = 0.0
        self._last_step_line = -math.inf

    def line(self, text: str) -> None:
        message = f"{PREFIX} {text}"
        print(message, file=self.out, flush=True)
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(message + "\n")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; its wall time lands in `times` whether it succeeds or fails."""
        self._stage, self._stage_start = name, self.clock()
        self._last_step_line = -math.inf
        self.line(f"stage {name}: started")
        try:
            yield
        except BaseException:
            self.times[name] = self.clock() - self._stage_start
            self.line(f"stage {name}: failed after {self.times[name]:.1f}s")
            raise
        self.times[name] = self.clock() - self._stage_start
        self.line(f"stage {name}: done in {self.times[name]:.1f}s")

    def elapsed(self) -> float:
        return self.clock() - self._stage_start

    def step(self, step: int, total: int, logs: dict[str, Any]) -> None:
        """One of ms-swift's log records during training: checked for a non-finite loss (which stops the
        stage at once), printed when due."""
        check_finite(logs, step)
        loss = logs.get("loss")
        if loss is None:
            return
        now = self.clock()
        if step <= 1 or step >= total or now - self._last_step_line >= self.step_interval_s:
            self._last_step_line = now
            self.line(f"{self._stage} step {step}/{total} loss {float(loss):.4f} elapsed {self.elapsed():.1f}s")


def check_finite(logs: dict[str, Any], step: int) -> None:
    """Raise NonFiniteLoss when a loss value in a log record is NaN or infinite."""
    for key, value in logs.items():
        if (key == "loss" or key.endswith("_loss")) and isinstance(value, int | float) and not math.isfinite(value):
            raise NonFiniteLoss(f"{key} is {value} at step {step}")
