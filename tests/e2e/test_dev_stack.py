"""End to end: the processes `make dev` starts (`python -m bailu.dev`), the real SmolLM2 model,
and the official `openai` client."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from bailu.dev.stack import port_free
from tests.e2e.devstack import DevStack, start_dev_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
PROMPT = [{"role": "user", "content": "Write a short poem about autumn light."}]


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = start_dev_stack(tmp_path_factory.mktemp("dev-state"))
    yield stack
    stack.stop()


@pytest.fixture
def client(dev_stack: DevStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{dev_stack.url}/v1", api_key=dev_stack.key, max_retries=0, timeout=120)


def test_models_lists_smollm2(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list()]


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=48)  # type: ignore[arg-type]
    text = completion.choices[0].message.content
    assert text
    assert text.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 48


def test_streamed_chat_completion(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces).strip()
    assert len([p for p in pieces if p]) > 1, "the answer should arrive in several pieces"
    assert finish in ("stop", "length")
    assert usage is not None
    assert usage.completion_tokens > 0


def test_text_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="Autumn light is", max_tokens=12)
    assert completion.choices[0].text.strip()


def test_errors_reach_the_client_as_openai_errors(client: openai.OpenAI, dev_stack: DevStack) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=PROMPT)  # type: ignore[arg-type]
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=-5)  # type: ignore[arg-type]
    assert bad.value.param == "max_tokens"
    anonymous = openai.OpenAI(base_url=f"{dev_stack.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_feedback_becomes_training_data(client: openai.OpenAI, dev_stack: DevStack) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=32)  # type: ignore[arg-type]
    edited = "Autumn light lies low and gold across the quiet field."
    response = httpx.post(
        f"{dev_stack.url}/v1/feedback",
        json={"type": "edit", "response_id": completion.id, "edited_text": edited},
        headers={"Authorization": f"Bearer {dev_stack.key}", "Idempotency-Key": "e2e-edit-1"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    shards = dev_stack.state / "datasets" / "shards"
    deadline = time.monotonic() + 30
    while not list(shards.glob("*/sft.jsonl")):
        assert time.monotonic() < deadline, "the collector wrote no dataset batch"
        time.sleep(0.2)
    record = json.loads(next(shards.glob("*/sft.jsonl")).read_text().splitlines()[0])
    assert record["messages"] == [*PROMPT, {"role": "assistant", "content": edited}]


def test_ctrl_c_stops_every_process(dev_stack: DevStack) -> None:
    """Runs last in this module (pytest keeps file order): stopping the stack frees every port."""
    dev_stack.process.send_signal(signal.SIGINT)
    assert dev_stack.process.wait(60) == 0
    deadline = time.monotonic() + 10
    while not all(port_free(p) for p in dev_stack.ports):
        assert time.monotonic() < deadline, "a process of the stack is still listening"
        time.sleep(0.2)
