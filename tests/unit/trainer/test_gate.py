"""The gate's decision, the sanity rules it reuses from the collector, and the loss check."""

from __future__ import annotations

import math

import pytest

from bailu.trainer import gate
from bailu.trainer.errors import NonFiniteLoss
from bailu.trainer.evaluate import SanityResult, sanity_check
from bailu.trainer.progress import check_finite

GOOD = SanityResult("a prompt", "Dew on the grass at dawn.", None)


def test_accepts_a_candidate_that_beats_the_baseline_by_the_margin() -> None:
    decision = gate.decide(0.72, 0.70, 0.02, [GOOD])  # a difference of 0.02 up to rounding
    assert decision.accepted
    assert decision.reasons == ()
    assert decision.margin == pytest.approx(0.02)
    assert decision.explain() == "held-out accuracy 0.720 vs 0.700 (+0.020 >= +0.020)"


def test_rejects_a_candidate_below_the_margin() -> None:
    decision = gate.decide(0.71, 0.70, 0.02, [GOOD])
    assert not decision.accepted
    assert decision.sanity_passed
    assert decision.reasons == ("accuracy 0.710 is not +0.020 over the baseline's 0.700",)
    assert decision.explain() == decision.reasons[0]


def test_a_negative_margin_accepts_a_slightly_worse_candidate() -> None:
    assert gate.decide(0.60, 0.65, -0.1, [GOOD]).accepted
    assert not gate.decide(0.50, 0.65, -0.1, [GOOD]).accepted


def test_rejects_when_a_generation_fails_the_sanity_check_even_if_accuracy_is_better() -> None:
    sanity = [GOOD, SanityResult("p", "", "empty"), SanityResult("p", "la la la la la la la", "repetition")]
    decision = gate.decide(0.95, 0.50, 0.02, sanity)
    assert not decision.accepted
    assert not decision.sanity_passed
    assert decision.reasons == ("sanity check: 2 of 3 generations unusable (empty, repetition)",)
    assert decision.to_dict()["accuracy_margin"] == pytest.approx(0.45)


REPEATS = SanityResult("p", "blessed earth, blessed earth, blessed earth, blessed earth", "repetition")


def test_sanity_is_relative_to_the_baseline() -> None:
    """A small base model repeats itself on some prompts: a candidate that does no worse passes."""
    candidate = [GOOD, REPEATS, GOOD, GOOD]
    assert gate.decide(0.8, 0.5, 0.02, candidate, [GOOD, REPEATS, GOOD, GOOD]).accepted
    assert gate.decide(0.8, 0.5, 0.02, candidate, [REPEATS, REPEATS, GOOD, GOOD]).accepted
    worse = gate.decide(0.8, 0.5, 0.02, [GOOD, REPEATS, REPEATS, GOOD], [GOOD, REPEATS, GOOD, GOOD])
    assert not worse.accepted
    assert not worse.sanity_passed
    assert worse.reasons == ("sanity check: 2 of 4 generations unusable (repetition), the baseline's: 1 of 4",)


def test_a_candidate_with_no_usable_generation_fails_even_against_a_useless_baseline() -> None:
    decision = gate.decide(0.9, 0.5, 0.0, [REPEATS, REPEATS], [REPEATS, REPEATS])
    assert not decision.accepted
    assert decision.reasons[0].startswith("sanity check: 2 of 2 generations unusable")


def test_sanity_uses_the_collector_quality_rules() -> None:
    prompts = [[{"role": "user", "content": f"p{i}"}] for i in range(5)]
    texts = [
        "White dew settles on the grass at dawn.",
        "   \n\n  ",
        "ok",
        "a moment's light, a moment's light, a moment's light, a moment's light",
        "abc $$$ ### %%% @@@ !!! *** def ghi",
    ]
    results = sanity_check(prompts, texts)
    assert [r.problem for r in results] == [None, "empty", "too_short", "repetition", "charset"]
    assert results[0].prompt == "p0"


def test_a_non_finite_loss_stops_training() -> None:
    check_finite({"loss": 2.5, "grad_norm": math.inf, "learning_rate": 0.1}, 3)  # only losses are checked
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 4"):
        check_finite({"loss": math.nan}, 4)
    with pytest.raises(NonFiniteLoss, match="nll_loss is inf"):
        check_finite({"loss": 1.0, "nll_loss": math.inf}, 5)
