"""Progress lines: stage wall times, throttled step lines with step/total, loss and elapsed time."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bailu.trainer.errors import NonFiniteLoss
from bailu.trainer.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stage_lines_steps_and_times(tmp_path: Path) -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, log_path=tmp_path / "trainer.log", clock=clock, step_interval_s=5)
    with progress.stage("sft"):
        for step in range(1, 11):
            clock.now += 1
            progress.step(step, 10, {"loss": 10.0 - step, "learning_rate": 1e-4})
        progress.step(10, 10, {"train_loss": 5.0})  # the summary record has no step loss
    lines = out.getvalue().splitlines()
    assert lines == [
        "[trainer] stage sft: started",
        "[trainer] sft step 1/10 loss 9.0000 elapsed 1.0s",
        "[trainer] sft step 6/10 loss 4.0000 elapsed 6.0s",
        "[trainer] sft step 10/10 loss 0.0000 elapsed 10.0s",
        "[trainer] stage sft: done in 10.0s",
    ]
    assert progress.times == {"sft": 10.0}
    assert (tmp_path / "trainer.log").read_text().splitlines() == lines


def test_a_failed_stage_is_timed_and_reported() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, clock=clock)
    with pytest.raises(NonFiniteLoss), progress.stage("rlhf"):  # noqa: PT012 (the stage must see the error)
        clock.now += 2.5
        progress.step(3, 10, {"loss": float("nan")})
    assert progress.times == {"rlhf": 2.5}
    assert out.getvalue().splitlines()[-1] == "[trainer] stage rlhf: failed after 2.5s"
