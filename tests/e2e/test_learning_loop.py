"""End to end, the learning loop on the real SmolLM2 through the processes `make dev` starts: feedback posted
through the gateway -> the collector writes pairs and its trigger starts the trainer -> the adapter is published
as the canary -> the worker loads it without a restart -> the alias serves both versions in about the canary's
share -> `bailu models rollback` sends all traffic back to the previous version.

Training is cut to a few steps (this checks the plumbing; `make bench-loop` measures what training learns), and
the evaluation gate's margin is opened (the gate's decisions are tested on the tiny model in
tests/integration/test_trainer*.py)."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from bailu.dev.__main__ import dev_trainer_env
from bailu.registry import Registry
from tests.conftest import SMOLLM2_DIR
from tests.e2e.devstack import DevStack, start_dev_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BASE = "smollm2-135m-instruct"
ADAPTER = "bailu-poet"
TOPICS = [
    "autumn light", "a harbour at dawn", "winter bread", "the last train", "a paper lantern", "spring rain",
    "an old bicycle", "the night market", "a kettle", "morning fog", "a library", "the first snow",
    "a lighthouse", "summer dust", "a violin", "river stones",
]  # fmt: skip
FAST_TRAINING = {
    "BAILU_TRAINER_MIN_PAIRS": "8",
    "BAILU_TRAINER_EVAL_FRACTION": "0.25",
    "BAILU_TRAINER_MAX_STEPS": "3",
    "BAILU_TRAINER_RLHF_MAX_STEPS": "2",
    "BAILU_TRAINER_GRAD_ACCUM": "1",
    "BAILU_TRAINER_LORA_RANK": "4",
    "BAILU_TRAINER_LORA_ALPHA": "8",
    "BAILU_TRAINER_MAX_LENGTH": "256",
    "BAILU_TRAINER_GATE_MARGIN": "-1",
    "BAILU_TRAINER_SANITY_PROMPTS": "1",
    "BAILU_TRAINER_SANITY_MAX_TOKENS": "16",
    "BAILU_TRAINER_CANARY_WEIGHT": "0.5",
    "BAILU_COLLECTOR_TRIGGER_INTERVAL_S": "2",
    "BAILU_WORKER_REGISTRY_POLL_S": "5",
    "BAILU_WORKER_ADAPTER_UNLOAD_GRACE_S": "2",
}


def three_line_poem(topic: str) -> str:
    return f"{topic.capitalize()} at the window\nholding what the day forgot\nquiet as a held breath"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    running = start_dev_stack(tmp_path_factory.mktemp("loop-state"), "--min-new-pairs", "12", env=FAST_TRAINING)
    yield running
    running.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float, stack: DevStack) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            runs = "\n".join(p.read_text()[-4000:] for p in (stack.state / "datasets" / "runs").glob("*.log"))
            pytest.fail(f"{what}: not after {timeout:.0f}s\n{stack.logs()}\n--- trainer runs\n{runs}")
        time.sleep(1)


def bailu(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI against this stack's registry and Redis; `train` gets the trainer settings the stack's
    collector gives the runs it starts."""
    redis_url = f"redis://127.0.0.1:{stack.ports[3]}/0"
    argv = [
        sys.executable, "-m", "bailu.cli",
        "--registry-dir", str(stack.state / "registry"),
        "--dataset-dir", str(stack.state / "datasets"),
        "--redis-url", redis_url,
        *args,
    ]  # fmt: skip
    trainer_env = dev_trainer_env(stack.state, redis_url, BASE, SMOLLM2_DIR.resolve(), ADAPTER)
    env = {**os.environ, **trainer_env, **FAST_TRAINING}
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)


def served_versions(client: openai.OpenAI, count: int) -> collections.Counter[str]:
    served: collections.Counter[str] = collections.Counter()
    for i in range(count):
        completion = client.chat.completions.create(
            model=ADAPTER,
            messages=[{"role": "user", "content": f"One word for {TOPICS[i % len(TOPICS)]}."}],
            max_tokens=2,
        )
        served[completion.model] += 1
    return served


def test_feedback_to_canary_to_rollback(stack: DevStack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key, max_retries=0, timeout=120)
    headers = {"Authorization": f"Bearer {stack.key}"}

    # 1. Feedback through the gateway: each edit is an SFT example and a pair (edited over original).
    for i, topic in enumerate(TOPICS):
        completion = client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": f"Write a short poem about {topic}."}], max_tokens=12
        )
        response = httpx.post(
            f"{stack.url}/v1/feedback",
            json={"type": "edit", "response_id": completion.id, "edited_text": three_line_poem(topic)},
            headers={**headers, "Idempotency-Key": f"loop-{i}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text

    # 2. The collector's trigger seals a dataset version and starts the trainer, which publishes the canary.
    registry = Registry(stack.state / "registry")

    def canary() -> str | None:
        return registry.aliases("adapter", ADAPTER).canary if registry.names("adapter") else None

    first = wait_for("a trained canary in the registry", canary, 900, stack)
    manifest = registry.manifest("adapter", ADAPTER, first)
    assert manifest.base_model == BASE
    assert manifest.dataset_version
    assert manifest.metrics, "the trainer records its evaluation"

    # 3. The worker loads it without a restart; with no production version yet, the canary serves the alias.
    first_name = f"{ADAPTER}@{first}"
    wait_for(f"{first_name} in /v1/models", lambda: first_name in [m.id for m in client.models.list()], 120, stack)
    assert served_versions(client, 3) == {first_name: 3}

    # 4. Promote it, then train again (by hand, as an operator would) for a second version: the canary.
    promoted = bailu(stack, "models", "promote", ADAPTER)
    assert promoted.returncode == 0, promoted.stderr
    assert registry.aliases("adapter", ADAPTER).production == first
    dataset = manifest.dataset_version
    assert dataset is not None
    trained = bailu(stack, "train", "--dataset-version", dataset, "--seed", "7", "--json")
    assert trained.returncode == 0, trained.stdout[-4000:] + trained.stderr[-4000:]
    second = registry.aliases("adapter", ADAPTER).canary
    assert second is not None
    assert second != first
    assert registry.aliases("adapter", ADAPTER).canary_weight == 0.5

    # 5. The alias is served by both versions in about the canary's share.
    second_name = f"{ADAPTER}@{second}"
    wait_for(f"{second_name} in /v1/models", lambda: second_name in [m.id for m in client.models.list()], 120, stack)
    split = served_versions(client, 40)
    assert set(split) == {first_name, second_name}, split
    # Binomial(40, 0.5): 8..32 holds with probability > 0.9999.
    assert 8 <= split[second_name] <= 32, split

    # 6. Rollback: all traffic returns to the previous version, and the worker unloads the canary.
    back = bailu(stack, "models", "rollback", ADAPTER)
    assert back.returncode == 0, back.stderr
    aliases = registry.aliases("adapter", ADAPTER)
    assert (aliases.production, aliases.canary) == (first, None)
    wait_for(f"{second_name} unloaded", lambda: second_name not in [m.id for m in client.models.list()], 60, stack)
    assert served_versions(client, 10) == {first_name: 10}
    result = json.loads(trained.stdout.strip().splitlines()[-1]) if trained.stdout.strip() else {}
    assert result, "bailu train --json prints the trainer's summary"
