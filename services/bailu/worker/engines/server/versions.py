"""The engine releases Bailu's engine-server dialects are written against: the one place they are pinned.

The Dockerfiles (docker/worker-<engine>.Dockerfile) take the engine's official image at these versions
as their `ARG ..._IMAGE` defaults, and docs/engines.md names them; a unit test keeps both in step with
this module. Moving an engine to a new release starts here: update the pin, then run `make check-engines`,
which checks the flags, request bodies, endpoints, LoRA calls, metric names and stream chunks of
`dialects.py`, `openai_http.py` and `engine_metrics.py` against that release's own code; the new version is
accepted when it passes.

ms-swift is not pinned here: the worker extra in pyproject.toml pins it (the `swift` engine runs the
ms-swift installed beside the worker).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EnginePin:
    """One engine release and the official image that ships it."""

    version: str
    image: str


VLLM = EnginePin("0.32.0", "vllm/vllm-openai:v0.32.0")
SGLANG = EnginePin("0.5.23", "lmsysorg/sglang:v0.5.23")
LMDEPLOY = EnginePin("0.16.0", "openmmlab/lmdeploy:v0.16.0-cu12.8")

PINS: dict[str, EnginePin] = {"vllm": VLLM, "sglang": SGLANG, "lmdeploy": LMDEPLOY}
