"""The engines' own virtual environments, `.cache/engines/<engine>-<version>/`, from the pins in `versions.py`.

Each engine is installed with pip and its own dependency pins, as its release asks, into a venv of its own; what
the CPU machine needs on top is here: vLLM is installed with `VLLM_TARGET_DEVICE=cpu` (torch 2.13.0 resolves to the
CPU build on the development machines), and the torchvision, torchaudio and torchcodec it pulls in are removed,
since their native libraries do not match that torch and nothing checked imports them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bailu.worker.engines.server.versions import PINS

ROOT = Path(__file__).resolve().parents[4]
ENGINES_DIR = ROOT / ".cache" / "engines"
STAMP = ".bailu-installed"


@dataclass(frozen=True, slots=True)
class Recipe:
    package: str
    env: dict[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


RECIPES = {
    "vllm": Recipe("vllm", {"VLLM_TARGET_DEVICE": "cpu"}, ("torchvision", "torchaudio", "torchcodec")),
    "sglang": Recipe("sglang"),
    "lmdeploy": Recipe("lmdeploy"),
}
# The environment the probe runs in, per engine.
PROBE_ENV = {"vllm": {"VLLM_TARGET_DEVICE": "cpu"}}


def venv_dir(engine: str) -> Path:
    return ENGINES_DIR / f"{engine}-{PINS[engine].version}"


def python(engine: str) -> Path:
    return venv_dir(engine) / "bin" / "python"


def installed(engine: str) -> bool:
    stamp = venv_dir(engine) / STAMP
    return stamp.is_file() and stamp.read_text().strip() == f"{RECIPES[engine].package}=={PINS[engine].version}"


def install(engine: str, base_python: str = sys.executable) -> None:
    """Create the engine's venv and install the pinned release (idempotent: a stamp records the spec)."""
    if installed(engine):
        return
    recipe, venv = RECIPES[engine], venv_dir(engine)
    spec = f"{recipe.package}=={PINS[engine].version}"
    env = {**os.environ, **recipe.env}
    if not python(engine).exists():
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)  # nosec B603 # argv list, no shell
    pip = [str(python(engine)), "-m", "pip"]
    print(f"installing {spec} into {venv} (several GB; can take a while)", flush=True)
    subprocess.run([*pip, "install", "-q", spec], check=True, env=env)  # nosec B603 # argv list, no shell
    if recipe.remove:
        subprocess.run([*pip, "uninstall", "-q", "-y", *recipe.remove], check=True, env=env)  # nosec B603
    (venv / STAMP).write_text(spec + "\n")
