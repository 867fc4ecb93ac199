"""Held-out evaluation: preference accuracy and greedy samples of a base model with an optional adapter.

Both go through ms-swift's chat template, as the workers serve: a pair is encoded by the template in
its preference mode (`rlhf`, what DPO trains on), whose labels mask the prompt and keep the last
assistant answer, and the score of an answer is the sum of its tokens' log-probabilities. Samples
come from ms-swift's TransformersEngine with the same template. Reusable outside the trainer:

    with Evaluator(model_dir, adapter_dir, model_type="llama", template="chatml") as evaluator:
        score = evaluator.preference_accuracy(pairs)
    texts = generate(model_dir, None, [pair.messages for pair in pairs], max_tokens=64)
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bailu.datasets.quality import QualityFilter
from bailu.trainer.data import Messages, Pair

IGNORE_INDEX = -100


@dataclass(frozen=True, slots=True)
class PreferenceScore:
    """`accuracy`: share of pairs whose chosen answer has the strictly higher log-probability;
    `mean_margin`: mean of chosen minus rejected log-probability (nats)."""

    accuracy: float
    pairs: int
    mean_margin: float

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "pairs": self.pairs, "mean_margin": self.mean_margin}


@dataclass(frozen=True, slots=True)
class SanityResult:
    prompt: str
    text: str
    problem: str | None  # the collector's rejection reason, or None when the text is acceptable

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "text": self.text, "problem": self.problem}


class Evaluator:
    """A base checkpoint plus an optional LoRA adapter, loaded once with ms-swift (as the workers load
    them); `close()` frees the weights."""

    def __init__(
        self,
        model_dir: Path,
        adapter_dir: Path | None = None,
        *,
        model_type: str = "llama",
        template: str = "chatml",
        max_length: int = 1024,
    ) -> None:
        from bailu.trainer.swift_runner import import_swift

        import_swift()
        from swift.model import get_model_processor
        from swift.template import get_template
        from swift.tuners import Swift

        model, processor = get_model_processor(str(model_dir), model_type=model_type, use_hf=True)
        if adapter_dir is not None:
            model = Swift.from_pretrained(model, str(adapter_dir))
        model.eval()
        self.model: Any = model
        self.processor: Any = processor
        self.template_type = template
        self._scoring = get_template(
            processor,
            template_type=template,
            max_length=max_length,
            truncation_strategy="left",
            loss_scale="last_round",
        )
        self._scoring.set_mode("rlhf")
        self._engine: Any = None

    def close(self) -> None:
        self.model = self._engine = None
        gc.collect()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def log_probs(self, pairs: Sequence[Pair], batch_size: int = 4) -> list[tuple[float, float]]:
        """(chosen, rejected) summed answer log-probabilities per pair."""
        import torch

        scores: list[tuple[float, float]] = []
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            encoded = [self._scoring.encode(pair.to_swift()) for pair in batch]
            inputs = self._scoring.data_collator(encoded)
            device = next(self.model.parameters()).device
            mask = inputs.get("attention_mask")
            with torch.inference_mode():
                logits = self.model(
                    input_ids=inputs["input_ids"].to(device), attention_mask=None if mask is None else mask.to(device)
                ).logits
            sums = answer_log_probs(logits, inputs["labels"].to(logits.device))
            scores += [(float(sums[i]), float(sums[len(batch) + i])) for i in range(len(batch))]
        return scores

    def preference_accuracy(self, pairs: Sequence[Pair], batch_size: int = 4) -> PreferenceScore:
        if not pairs:
            raise ValueError("no pairs to evaluate")
        scores = self.log_probs(pairs, batch_size)
        wins = sum(chosen > rejected for chosen, rejected in scores)
        margin = sum(chosen - rejected for chosen, rejected in scores) / len(scores)
        return PreferenceScore(wins / len(scores), len(scores), margin)

    def generate(self, prompts: Sequence[Messages], max_tokens: int, seed: int = 0) -> list[str]:
        """Greedy answers to each prompt, as a worker would serve them."""
        if not prompts:
            return []
        from swift.infer_engine import InferRequest, RequestConfig
        from swift.infer_engine import TransformersEngine as SwiftEngine
        from swift.template import get_template

        if self._engine is None:
            template = get_template(self.processor, template_type=self.template_type)
            self._engine = SwiftEngine(self.model, template=template, max_batch_size=len(prompts))
        config = RequestConfig(max_tokens=max_tokens, temperature=0.0, seed=seed)
        responses = self._engine.infer([InferRequest(messages=list(p)) for p in prompts], config, use_tqdm=False)
        return [str(r.choices[0].message.content or "") for r in responses]


def answer_log_probs(logits: Any, labels: Any) -> Any:
    """Per row, the summed log-probability of the labelled tokens (labels aligned with the inputs, as
    Hugging Face models take them: the token at t is predicted by the logits at t - 1)."""
    import torch

    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    rows = []
    for row in range(logits.shape[0]):  # row by row: a batch's full-vocabulary log-softmax is large
        picked = torch.log_softmax(logits[row], dim=-1).gather(-1, safe[row].unsqueeze(-1)).squeeze(-1)
        rows.append((picked * mask[row]).sum())
    return torch.stack(rows)


def generate(
    model_dir: Path,
    adapter_dir: Path | None,
    prompts: Sequence[Messages],
    max_tokens: int,
    *,
    model_type: str = "llama",
    template: str = "chatml",
    seed: int = 0,
) -> list[str]:
    with Evaluator(model_dir, adapter_dir, model_type=model_type, template=template) as ev:
        return ev.generate(prompts, max_tokens, seed)


def sanity_check(
    prompts: Sequence[Messages], texts: Sequence[str], quality: QualityFilter | None = None
) -> list[SanityResult]:
    """The collector's quality rules (empty, too short, wrong characters, degenerate repetition) applied to
    generated answers."""
    check = quality or QualityFilter()
    return [
        SanityResult(prompt[-1]["content"] if prompt else "", text, check.reject(text))
        for prompt, text in zip(prompts, texts, strict=True)
    ]
