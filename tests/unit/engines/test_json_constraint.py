"""The transformers engine's JSON constraint (xgrammar) on SmolLM2's real tokenizer, driven step by step with
random logits: constrained rows can only spell valid JSON, the other rows of the batch are untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from bailu.common.errors import InvalidRequest
from bailu.common.types import JSON_SCHEMA_PARAM, SamplingParams
from bailu.worker.engines.json_constraint import JsonConstraint, JsonGrammars

# A finite language: a bounded string, a bounded integer, an enum; no free whitespace. Random tokens
# within the mask must end it within a few dozen steps.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["calm", "wild"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
MAX_STEPS = 120


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def grammars(tokenizer: Any, tiny_model: Path) -> JsonGrammars:
    return JsonGrammars(tokenizer, AutoConfig.from_pretrained(tiny_model).vocab_size)


def closing_ids(tokenizer: Any) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in ("}", "]", '"', '"}')] + [tokenizer.eos_token_id]


def test_a_batch_mixes_constrained_and_free_rows(grammars: JsonGrammars, tokenizer: Any) -> None:
    eos = tokenizer.eos_token_id
    person = grammars.compile(SamplingParams(json_schema=json.dumps(PERSON)))
    any_object = grammars.compile(SamplingParams(json_object=True))
    assert person is not None
    assert any_object is not None
    processor = JsonConstraint({0: person, 2: any_object}, grammars.vocab_size)
    generator = torch.Generator().manual_seed(7)
    prompt = torch.tensor([tokenizer.encode("Describe a person:")] * 3)
    ids = prompt.clone()
    done = [False, False, False]
    closing = closing_ids(tokenizer)
    for step in range(MAX_STEPS):
        scores = torch.randn((3, grammars.vocab_size), generator=generator)
        free = scores[1].clone()
        masked = processor(ids, scores.clone())
        assert torch.equal(masked[1], free)  # the unconstrained row is never touched
        picks = []
        for row in range(3):
            allowed = torch.isfinite(masked[row])
            if done[row]:
                picks.append(eos)
                continue
            assert allowed.any()
            if row == 2 and step > 8:  # end the free-form object: prefer whatever closes it
                preferred = [t for t in closing if allowed[t]]
                if preferred:
                    picks.append(preferred[0])
                    done[row] = preferred[0] == eos
                    continue
            pick = int(masked[row].argmax())
            picks.append(pick)
            done[row] = pick == eos
        ids = torch.cat([ids, torch.tensor(picks)[:, None]], dim=1)
        if done[0] and done[2]:
            break
    assert done[0], "the schema's row did not end"
    assert done[2], "the json_object row did not end"
    texts = [tokenizer.decode(row[prompt.shape[1] :], skip_special_tokens=True) for row in ids]
    jsonschema.validate(json.loads(texts[0]), PERSON)
    assert texts[0].startswith('{"name": "')  # the fixed layout: OpenAI's separators, no free whitespace
    assert isinstance(json.loads(texts[2]), dict)


def test_a_row_cut_short_is_left_alone(grammars: JsonGrammars, tokenizer: Any) -> None:
    """A cancelled row gets end-of-sequence forced before its JSON is complete: its constraint ends quietly."""
    person = grammars.compile(SamplingParams(json_schema=json.dumps(PERSON)))
    assert person is not None
    processor = JsonConstraint({0: person}, grammars.vocab_size)
    ids = torch.tensor([tokenizer.encode("Hi")])
    processor(ids, torch.zeros((1, grammars.vocab_size)))
    ids = torch.cat([ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)  # refused by the grammar here
    scores = torch.zeros((1, grammars.vocab_size))
    assert torch.equal(processor(ids, scores.clone()), scores)
    assert not processor.matchers


def test_each_schema_is_compiled_once(grammars: JsonGrammars) -> None:
    schema = json.dumps({**PERSON, "title": "cache probe"})
    grammars.compile(SamplingParams(json_schema=schema))
    size = grammars.cache_size_bytes
    grammars.compile(SamplingParams(json_schema=schema))
    assert grammars.cache_size_bytes == size
    grammars.compile(SamplingParams(json_schema=json.dumps({**PERSON, "title": "another"})))
    assert grammars.cache_size_bytes > size


def test_unconstrained_requests_compile_nothing(grammars: JsonGrammars) -> None:
    assert grammars.compile(SamplingParams()) is None


def test_a_schema_the_library_cannot_compile_is_a_400_naming_it(grammars: JsonGrammars) -> None:
    broken = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}
    with pytest.raises(InvalidRequest) as info:
        grammars.compile(SamplingParams(json_schema=json.dumps(broken)))
    assert info.value.param == JSON_SCHEMA_PARAM
    assert "cannot decode to the JSON Schema" in info.value.message
