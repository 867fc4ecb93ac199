"""The evaluation gate (pure): a candidate is accepted iff its generations pass the sanity check and its
held-out preference accuracy beats the baseline's (production, or the base model) by `gate_margin`.

The sanity check is relative: small base models repeat themselves on some prompts too (SmolLM2-135M does),
so a candidate fails it when more of its generations are unusable than the baseline's on the same prompts,
or when none is usable at all. Without baseline generations, any unusable generation fails it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bailu.trainer.evaluate import SanityResult

# Accuracies are fractions k/n: compare with a tolerance so that 0.52 - 0.50 counts as a 0.02 margin.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class GateDecision:
    accepted: bool
    candidate_accuracy: float
    baseline_accuracy: float
    required_margin: float
    sanity_passed: bool
    reasons: tuple[str, ...]  # why it was rejected (empty when accepted)

    @property
    def margin(self) -> float:
        return self.candidate_accuracy - self.baseline_accuracy

    def summary(self) -> str:
        sign = ">=" if self.margin + _EPSILON >= self.required_margin else "<"
        return (
            f"held-out accuracy {self.candidate_accuracy:.3f} vs {self.baseline_accuracy:.3f} "
            f"({self.margin:+.3f} {sign} {self.required_margin:+.3f})"
        )

    def explain(self) -> str:
        """The accuracy comparison when accepted, else every reason for the rejection."""
        return self.summary() if self.accepted else "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "candidate_accuracy": self.candidate_accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "accuracy_margin": self.margin,
            "gate_margin": self.required_margin,
            "sanity_passed": self.sanity_passed,
            "reasons": list(self.reasons),
        }


def decide(
    candidate_accuracy: float,
    baseline_accuracy: float,
    gate_margin: float,
    sanity: Sequence[SanityResult],
    baseline_sanity: Sequence[SanityResult] = (),
) -> GateDecision:
    reasons: list[str] = []
    failed = [result for result in sanity if result.problem is not None]
    baseline_failed = sum(result.problem is not None for result in baseline_sanity)
    sanity_failed = bool(failed) and (len(failed) == len(sanity) or len(failed) > baseline_failed)
    if sanity_failed:
        problems = ", ".join(sorted({str(result.problem) for result in failed}))
        reason = f"sanity check: {len(failed)} of {len(sanity)} generations unusable ({problems})"
        if baseline_sanity:
            reason += f", the baseline's: {baseline_failed} of {len(baseline_sanity)}"
        reasons.append(reason)
    if candidate_accuracy - baseline_accuracy + _EPSILON < gate_margin:
        reasons.append(
            f"accuracy {candidate_accuracy:.3f} is not {gate_margin:+.3f} over the baseline's {baseline_accuracy:.3f}"
        )
    return GateDecision(
        accepted=not reasons,
        candidate_accuracy=candidate_accuracy,
        baseline_accuracy=baseline_accuracy,
        required_margin=gate_margin,
        sanity_passed=not sanity_failed,
        reasons=tuple(reasons),
    )
