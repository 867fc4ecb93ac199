"""A run's outcome: what the CLI's final line says, `result.json` holds and `--json` prints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bailu.registry.serving import version_name

Outcome = Literal["published", "rejected", "already_built", "failed"]

EXIT_OK = 0
RESULT_FILE = "result.json"


@dataclass(slots=True)
class Result:
    outcome: Outcome
    run_id: str
    run_dir: str
    adapter_name: str
    dataset_version: str | None = None
    version: str | None = None  # the adapter version published, or the existing one when already built
    status: str | None = None
    canary_weight: float | None = None
    exports: dict[str, str] = field(default_factory=dict)
    indexed: bool | None = None  # the Redis index and events were updated (None: not published)
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    exit_code: int = EXIT_OK
    reason: str | None = None  # why it failed, or why the gate rejected it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    def write(self) -> Path:
        path = Path(self.run_dir) / RESULT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return path

    def final_line(self) -> str:
        name = version_name(self.adapter_name, self.version) if self.version else self.adapter_name
        if self.outcome == "published":
            canary = f"canary with weight {self.canary_weight:g}"
            exports = "".join(f", {n}@{v}" for n, v in sorted(self.exports.items()))
            return f"published {name} as {self.status}, {canary}{exports}: {self.reason}"
        if self.outcome == "rejected":
            return f"rejected {name} (recorded with status rejected, aliases untouched): {self.reason}"
        if self.outcome == "already_built":
            return (
                f"already built {name} (status {self.status}) from dataset {self.dataset_version} with the same "
                "config: nothing to do"
            )
        return f"failed (exit {self.exit_code}): {self.reason}"
