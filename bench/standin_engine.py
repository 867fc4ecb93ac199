"""A stand-in for vLLM's OpenAI-compatible server with fixed timing, cheap enough not to matter.

    python bench/standin_engine.py --port P [--ttft-ms 50] [--itl-ms 10] [--output-tokens 32] [VLLM FLAGS...]

It speaks the part of the `vllm` dialect the worker uses (services/bailu/worker/engines/server/dialects.py),
so that a worker runs it as its engine server (`BAILU_WORKER_ENGINE=vllm`,
`BAILU_WORKER_ENGINE_EXECUTABLE="python bench/standin_engine.py --ttft-ms 50"`); vLLM's own flags that the
dialect adds (`--served-model-name`, `--host`, `--port`, ...) are read or ignored, never refused.

- GET /health (200, empty), /v1/models, /version, /metrics (`vllm:num_requests_running`, `_waiting`,
  `vllm:kv_cache_usage_perc`, `vllm:time_to_first_token_seconds`, `vllm:generation_tokens_total`),
  /standin/stats (its own counters and pid, for the benchmark);
- POST /v1/chat/completions and /v1/completions, streamed (SSE over chunked HTTP/1.1, one event per token,
  vLLM's chunk shape: a role chunk with the first token, a finish chunk, with `stream_options.include_usage` a
  usage-only chunk with no choices, usage on every chunk with `continuous_usage_stats`, then `[DONE]`) or not;
- POST /v1/load_lora_adapter and /v1/unload_lora_adapter (names only; the output is the same).

Timing: the first token `--ttft-ms` after the request arrived, then one every `--itl-ms`, on an absolute
schedule (no drift); `min(--output-tokens, max_tokens)` tokens, finishing with "length" when max_tokens cut
it. A client that closes its connection mid-stream aborts the request (counted in /standin/stats).

Cheap by construction: one asyncio protocol per connection (uvloop when installed), a timer callback per
token (no task, no coroutine), and each event's bytes built from pieces encoded once per (endpoint, model,
prompt length, usage mode), so that its CPU per token stays small beside the relay's. Standard library only
(uvloop optional), so any interpreter runs it. Kept-alive connections are closed after 5 s idle, as
uvicorn (which vLLM's server runs on) does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

WORDS = (
    " White", " dew", " at", " dawn", " settles", " on", " the", " grass", ",", " cool", " and", " bright",
    " as", " autumn", " light", " comes", " in", " slow", " gold", " over", " the", " quiet", " field", ".",
)  # fmt: skip
MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
KEEP_ALIVE_S = 5.0
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}


@dataclass
class Config:
    host: str
    port: int
    served_names: tuple[str, ...]
    model_path: str
    ttft_s: float
    itl_s: float
    output_tokens: int
    max_model_len: int
    max_num_seqs: int


@dataclass
class Stats:
    started_at: float = field(default_factory=time.time)
    connections: int = 0
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    tokens_sent: int = 0
    running: int = 0
    ttft_sum_s: float = 0.0
    ttft_buckets: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS) + 1))


@dataclass(frozen=True)
class Pieces:
    """The constant parts of one stream's events: event i is `head + <id and created> + tails[i]`."""

    head: bytes
    role_tail: bytes
    tails: tuple[bytes, ...]  # token i, no finish reason
    last_length: bytes  # the last token with finish_reason "length" (max_tokens reached), as vLLM sends it
    finish_stop: bytes  # the end of sequence: no text, finish_reason "stop"
    usage_tail: bytes  # the usage-only chunk (no choices) that include_usage asks for


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def build_pieces(chat: bool, model: str, prompt_tokens: int, continuous: bool, tokens: int) -> Pieces:
    """The encoded pieces of a stream of `tokens` tokens (see `Pieces`)."""

    def tail(choice: dict[str, Any] | None, completion: int, with_usage: bool) -> bytes:
        parts = [f',"model":{_dumps(model)}', f',"choices":[{_dumps(choice)}]' if choice else ',"choices":[]']
        if with_usage:
            usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion}
            usage["completion_tokens"] = completion
            parts.append(f',"usage":{_dumps(usage)}')
        return ("".join(parts) + "}\n\n").encode()

    def choice(text: str, finish: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            delta = {"role": "assistant", "content": text} if role else {"content": text}
            out: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            out = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            out["stop_reason"] = None
        return out

    tails = tuple(tail(choice(WORDS[i % len(WORDS)], None), i + 1, continuous) for i in range(tokens))
    return Pieces(
        head=f'data: {{"id":"{"chatcmpl" if chat else "cmpl"}-'.encode(),
        role_tail=tail(choice("", None, role=True), 0, continuous) if chat else b"",
        tails=tails,
        last_length=tail(choice(WORDS[(tokens - 1) % len(WORDS)], "length"), tokens, continuous),
        finish_stop=tail(choice("", "stop"), tokens, continuous),
        usage_tail=tail(None, tokens, True),
    )


class Engine:
    """The server's shared state: configuration, counters, the piece cache, the open connections."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = Stats()
        self.adapters: set[str] = set()
        self.connections: set[Connection] = set()
        self._pieces: collections.OrderedDict[tuple[Any, ...], Pieces] = collections.OrderedDict()

    def pieces(self, chat: bool, model: str, prompt_tokens: int, continuous: bool, tokens: int) -> Pieces:
        key = (chat, model, prompt_tokens, continuous, tokens)
        found = self._pieces.get(key)
        if found is None:
            found = self._pieces[key] = build_pieces(chat, model, prompt_tokens, continuous, tokens)
            if len(self._pieces) > 256:
                self._pieces.popitem(last=False)
        return found

    def observe_ttft(self, seconds: float) -> None:
        self.stats.ttft_sum_s += seconds
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.stats.ttft_buckets[i] += 1
                return
        self.stats.ttft_buckets[-1] += 1

    def metrics(self) -> bytes:
        labels = f'engine="0",model_name="{self.config.served_names[0]}"'
        s = self.stats
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(s.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} 0.0",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {min(1.0, s.running / max(1, self.config.max_num_seqs))}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {float(s.tokens_sent)}",
            "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
            "# TYPE vllm:time_to_first_token_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip((*TTFT_BUCKETS, float("inf")), s.ttft_buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{le}"}} {float(cumulative)}')
        lines.append(f"vllm:time_to_first_token_seconds_count{{{labels}}} {float(cumulative)}")
        lines.append(f"vllm:time_to_first_token_seconds_sum{{{labels}}} {s.ttft_sum_s}")
        return ("\n".join(lines) + "\n").encode()

    def stats_body(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in vars(self.stats).items() if k != "ttft_buckets"},
            "pid": os.getpid(),
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "open_connections": len(self.connections),
            "config": vars(self.config),
        }


class Stream:
    """One streamed completion on a connection, driven by timer callbacks on an absolute schedule."""

    __slots__ = ("conn", "handle", "ident", "length", "loop", "pieces", "sent", "t0", "tokens", "usage")

    def __init__(self, conn: Connection, pieces: Pieces, tokens: int, length: bool, usage: bool) -> None:
        self.conn = conn
        self.pieces = pieces
        obj = "chat.completion.chunk" if pieces.role_tail else "text_completion"
        self.ident = f'{uuid.uuid4().hex}","object":"{obj}","created":{int(time.time())}'.encode()
        self.tokens = tokens
        self.length = length
        self.usage = usage
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.sent = 0
        self.handle: asyncio.TimerHandle | None = self.loop.call_at(self.t0 + conn.engine.config.ttft_s, self.tick)

    def _event(self, tail: bytes) -> bytes:
        data = b"".join((self.pieces.head, self.ident, tail))
        return b"%x\r\n%s\r\n" % (len(data), data)

    def tick(self) -> None:
        engine = self.conn.engine
        out = []
        if self.sent == 0:
            engine.observe_ttft(self.loop.time() - self.t0)
            if self.pieces.role_tail:
                out.append(self._event(self.pieces.role_tail))
        self.sent += 1
        engine.stats.tokens_sent += 1
        if self.sent < self.tokens:
            out.append(self._event(self.pieces.tails[self.sent - 1]))
            self.conn.write(b"".join(out))
            when = self.t0 + engine.config.ttft_s + self.sent * engine.config.itl_s
            self.handle = self.loop.call_at(when, self.tick)
            return
        if self.length:
            out.append(self._event(self.pieces.last_length))
        else:
            out += (self._event(self.pieces.tails[self.sent - 1]), self._event(self.pieces.finish_stop))
        if self.usage:
            out.append(self._event(self.pieces.usage_tail))
        out.append(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        self.handle = None
        engine.stats.streams_completed += 1
        engine.stats.running -= 1
        self.conn.write(b"".join(out))
        self.conn.finished()

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
            stats = self.conn.engine.stats
            stats.streams_aborted += 1
            stats.running -= 1


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: requests in order (a streamed response holds the next one back)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.stream: Stream | None = None
        self.busy = False  # a response is being generated: later requests wait
        self.close_after = False
        self.last_active = time.monotonic()
        self.idle_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.engine.connections.add(self)
        self.engine.stats.connections += 1
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_active = time.monotonic()
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.connections.discard(self)
        if self.stream is not None:
            self.stream.abort()
            self.stream = None
        if self.idle_timer is not None:
            self.idle_timer.cancel()

    # --- writing -----------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def respond(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        head = f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nserver: standin\r\n"
        head += f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        head += "connection: close\r\n\r\n" if self.close_after else "\r\n"
        self.write(head.encode() + body)
        self.finished()

    def error(self, status: int, message: str, param: str | None = None) -> None:
        kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
        body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        self.respond(status, _dumps(body).encode())

    def finished(self) -> None:
        """The response is written: close if asked to, else take the next request."""
        self.stream = None
        self.busy = False
        self.last_active = time.monotonic()
        if self.close_after:
            if self.transport is not None:
                self.transport.close()
            return
        if self.buffer:
            self._process()

    def _arm_idle(self) -> None:
        self.idle_timer = asyncio.get_running_loop().call_later(KEEP_ALIVE_S, self._idle_check)

    def _idle_check(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self.busy and not self.buffer and time.monotonic() - self.last_active >= KEEP_ALIVE_S:
            self.transport.close()
            return
        self._arm_idle()

    # --- requests ----------------------------------------------------------------------------------------

    def _process(self) -> None:
        if self.busy:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.close_after = True
                self.error(413, "request head too large")
            return
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        method, path, version = [*lines[0].split(" "), "", "", ""][:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        rest = self.buffer[end + 4 :]
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parsed = _dechunk(rest)
            if parsed is None:
                return  # not all of it yet
            body, rest = parsed
        else:
            length = int(headers.get("content-length") or 0)
            if length > MAX_BODY:
                self.close_after = True
                self.error(413, "request body too large")
                return
            if len(rest) < length:
                return
            body, rest = rest[:length], rest[length:]
        self.buffer = rest
        self.close_after = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        self.engine.stats.requests += 1
        self.busy = True
        self._route(method, path.split("?", 1)[0], body)

    def _route(self, method: str, path: str, body: bytes) -> None:
        engine = self.engine
        if method == "GET":
            if path in ("/health", "/ping"):
                self.respond(200, b"")
            elif path == "/v1/models":
                self.respond(200, _dumps(self._models()).encode())
            elif path == "/version":
                self.respond(200, b'{"version":"0.0.0+standin"}')
            elif path == "/metrics":
                self.respond(200, engine.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/standin/stats":
                self.respond(200, _dumps(engine.stats_body()).encode())
            else:
                self.error(404, f"no route GET {path}")
            return
        if method != "POST":
            self.error(405, f"method {method} not allowed")
            return
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            self.error(400, "the body is not JSON")
            return
        if not isinstance(request, dict):
            self.error(400, "the body is not a JSON object")
            return
        if path in ("/v1/chat/completions", "/v1/completions"):
            self._generate(path == "/v1/chat/completions", request)
        elif path == "/v1/load_lora_adapter":
            engine.adapters.add(str(request.get("lora_name")))
            self.respond(200, f"Success: LoRA adapter '{request.get('lora_name')}' added successfully.".encode())
        elif path == "/v1/unload_lora_adapter":
            engine.adapters.discard(str(request.get("lora_name")))
            self.respond(200, f"Success: LoRA adapter '{request.get('lora_name')}' removed successfully.".encode())
        else:
            self.error(404, f"no route POST {path}")

    def _models(self) -> dict[str, Any]:
        c = self.engine.config
        created = int(self.engine.stats.started_at)
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": c.model_path,
             "parent": None, "max_model_len": c.max_model_len}
            for name in (*c.served_names, *sorted(self.engine.adapters))
        ]  # fmt: skip
        return {"object": "list", "data": data}

    def _generate(self, chat: bool, request: dict[str, Any]) -> None:
        engine = self.engine
        model = str(request.get("model") or engine.config.served_names[0])
        if model not in engine.config.served_names and model not in engine.adapters:
            self.error(404, f"The model `{model}` does not exist.", "model")
            return
        if chat and not isinstance(request.get("messages"), list):
            self.error(400, "messages: a list is required", "messages")
            return
        if int(request.get("n") or 1) != 1:
            self.error(400, "the stand-in engine serves n=1 only", "n")
            return
        max_tokens = request.get("max_tokens") or request.get("max_completion_tokens")
        limit = int(max_tokens) if max_tokens else engine.config.output_tokens
        tokens = max(1, min(engine.config.output_tokens, limit))
        length = limit <= engine.config.output_tokens
        prompt = _dumps(request.get("messages")) if chat else str(request.get("prompt") or "")
        prompt_tokens = max(1, len(prompt) // 4)
        if not request.get("stream"):
            self._complete(chat, model, tokens, length, prompt_tokens)
            return
        options = request.get("stream_options") or {}
        usage = bool(options.get("include_usage"))
        continuous = usage and bool(options.get("continuous_usage_stats"))
        pieces = engine.pieces(chat, model, prompt_tokens, continuous, tokens)
        engine.stats.streams_started += 1
        engine.stats.running += 1
        head = "HTTP/1.1 200 OK\r\nserver: standin\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        head += "connection: close\r\n" if self.close_after else ""
        self.write((head + "transfer-encoding: chunked\r\n\r\n").encode())
        self.stream = Stream(self, pieces, tokens, length, usage)

    def _complete(self, chat: bool, model: str, tokens: int, length: bool, prompt_tokens: int) -> None:
        """A response that is not streamed, sent once the whole completion would have been generated."""
        text = "".join(WORDS[i % len(WORDS)] for i in range(tokens))
        finish = "length" if length else "stop"
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            if chat
            else {"index": 0, "text": text, "finish_reason": finish}
        )
        body = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
        }
        c = self.engine.config
        delay = c.ttft_s + (tokens - 1) * c.itl_s
        self.engine.stats.tokens_sent += tokens
        asyncio.get_running_loop().call_later(delay, self.respond, 200, _dumps(body).encode())


def _dechunk(data: bytes) -> tuple[bytes, bytes] | None:
    """A whole chunked body at the start of `data` and what follows it, or None if it is not all there."""
    body, at = b"", 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(data[at:line_end].split(b";")[0] or b"0", 16)
        start = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", line_end)
            if trailer_end < 0 and data[start : start + 2] != b"\r\n":
                return None
            return body, data[start + 2 :] if data[start : start + 2] == b"\r\n" else data[trailer_end + 4 :]
        if len(data) < start + size + 2:
            return None
        body += data[start : start + size]
        at = start + size + 2


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--model", default=None, help="the model (vLLM's `serve MODEL` positional also works)")
    parser.add_argument("--ttft-ms", type=float, default=50.0, help="time to the first token")
    parser.add_argument("--itl-ms", type=float, default=10.0, help="time between tokens")
    parser.add_argument("--output-tokens", type=int, default=32, help="tokens per completion (max_tokens caps it)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    args, unknown = parser.parse_known_args(argv)
    positional = [a for a in unknown if not a.startswith("-")]
    model = args.model or (positional[0] if positional else "standin")
    return Config(
        host=args.host,
        port=args.port,
        served_names=tuple(args.served_model_name or [model]),
        model_path=model,
        ttft_s=args.ttft_ms / 1000,
        itl_s=args.itl_ms / 1000,
        output_tokens=max(1, args.output_tokens),
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
    )


async def serve(config: Config) -> None:
    engine = Engine(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(engine), config.host, config.port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"standin engine on {config.host}:{config.port} pid {os.getpid()} serving {list(config.served_names)} "
          f"(ttft {config.ttft_s * 1000:g} ms, itl {config.itl_s * 1000:g} ms, {config.output_tokens} tokens)",
          flush=True)  # fmt: skip
    await stop.wait()
    server.close()
    for conn in list(engine.connections):
        if conn.transport is not None:
            conn.transport.close()
    await server.wait_closed()


def main() -> None:
    config = parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
        return
    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
