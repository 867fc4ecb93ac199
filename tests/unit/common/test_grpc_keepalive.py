"""The keepalive contract's two ends agree (a mismatch silently disables keepalive, or gets the gateway's
connections closed with GOAWAY too_many_pings)."""

from __future__ import annotations

from bailu.common import grpc_keepalive as ka
from bailu.gateway.settings import GatewaySettings


def test_the_worker_admits_the_gateway_pings() -> None:
    client, server = dict(ka.CLIENT_OPTIONS), dict(ka.SERVER_OPTIONS)
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < client["grpc.keepalive_time_ms"]
    assert server["grpc.keepalive_permit_without_calls"] == client["grpc.keepalive_permit_without_calls"] == 1


def test_the_gateway_keeps_pinging_a_silent_stream_and_bounds_the_ack() -> None:
    client = dict(ka.CLIENT_OPTIONS)
    assert client["grpc.http2.max_pings_without_data"] == 0  # else two pings, then none (grpc/grpc#25722)
    assert client["grpc.http2.ping_timeout_ms"] == client["grpc.keepalive_timeout_ms"]
    # A frozen worker is detected within the gateway's default idle timeout.
    idle_s = GatewaySettings.model_fields["stream_idle_timeout_s"].default
    assert client["grpc.keepalive_time_ms"] + client["grpc.http2.ping_timeout_ms"] <= idle_s * 1000
