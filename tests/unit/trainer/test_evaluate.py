"""The answer log-probability sum the preference accuracy is built on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bailu.trainer.evaluate import IGNORE_INDEX, answer_log_probs


def test_sums_only_labelled_tokens_each_predicted_by_the_previous_position() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=generator)
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 4, 7, 1, IGNORE_INDEX],  # prompt masked, padding at the end
            [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9, 2, 3],
        ]
    )
    sums = answer_log_probs(logits, labels)
    for row in range(2):
        expected = -F.cross_entropy(logits[row, :-1], labels[row, 1:], ignore_index=IGNORE_INDEX, reduction="sum")
        assert torch.allclose(sums[row], expected)
    # Changing a masked position's logits changes nothing; changing a labelled one does.
    changed = logits.clone()
    changed[0, 0, 4] += 5.0
    assert torch.allclose(answer_log_probs(changed, labels), sums)
    changed[0, 2, 7] += 5.0
    assert not torch.allclose(answer_log_probs(changed, labels)[0], sums[0])
