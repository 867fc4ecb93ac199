"""The gRPC keepalive contract between the gateway (client) and the workers (server).

Both ends must agree, or keepalive silently does nothing (see gRPC core's doc/keepalive.md):

- The client pings every `KEEPALIVE_TIME_MS` of silence and closes the transport when a ping is not
  acknowledged within `KEEPALIVE_TIMEOUT_MS`, failing every call on it with UNAVAILABLE: a dead or frozen
  (SIGSTOP) worker is detected within their sum, mid-stream too.
- In the gRPC core this runs on (grpcio 1.85) a ping's acknowledgement is awaited for
  `grpc.http2.ping_timeout_ms` (default 1 minute), keepalive's pings included: with `keepalive_timeout_ms`
  alone a frozen worker's stream did not fail within a minute (measured; with it, 10 s: the keepalive test
  in tests/faults/test_worker_faults.py). The same bound covers BDP pings where BDP probing is
  on (the gateway turns it off, gateway/backpressure.py). An alive worker acknowledges pings from gRPC's
  own threads, however busy its Python code is.
- gRPC core's client sends at most `grpc.http2.max_pings_without_data` pings (default 2) while it has no
  data or headers to send, which is always the case on a server-streaming call once its request is out:
  after two pings keepalive stops (grpc/grpc#25722). 0 lifts the limit.
- The server counts pings closer together than `grpc.http2.min_ping_interval_without_data_ms`
  (default 5 minutes), or on a connection without calls unless `grpc.keepalive_permit_without_calls`, as
  strikes; after `grpc.http2.max_ping_strikes` (default 2) it answers GOAWAY `too_many_pings` and closes the
  connection with its calls. Its policy must admit the client's interval (with margin for timer jitter).

The worker pings too (`SERVER_KEEPALIVE_TIME_MS`), so that it notices a gateway that vanished and cancels
its generations. Bounds on a single call (first token, idle gaps) are the gateway's own settings; keepalive
is the transport-level backstop below them.
"""

from __future__ import annotations

KEEPALIVE_TIME_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 5_000
SERVER_KEEPALIVE_TIME_MS = 20_000
SERVER_KEEPALIVE_TIMEOUT_MS = 10_000

# 16 MiB: a long prompt (many messages) fits in one request.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

CLIENT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A worker that comes back (restarted, resumed) is connected again within 5 s, not gRPC's default 120 s.
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
