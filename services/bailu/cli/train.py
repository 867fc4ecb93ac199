"""`bailu train [TRAINER FLAGS...]`: the trainer (`python -m bailu.trainer`) run here, in this interpreter.

The flags reach the trainer verbatim and its exit code is the CLI's. The CLI's registry, dataset
directory and Redis become the trainer's defaults (BAILU_TRAINER_REGISTRY_DIR, ..._DATASET_DIR,
..._REDIS_URL) unless those variables are already set; the trainer's own flags override both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from bailu.cli.errors import CliError
from bailu.cli.redis_access import connect_or_warn
from bailu.cli.settings import CliSettings

TRAINER_MODULE = "bailu.trainer"
WITHOUT_REDIS = (
    "the trainer will publish to the registry files only (workers notice at their next poll; "
    "run `bailu models reindex` for the gateway)"
)


def trainer_env(settings: CliSettings, environ: dict[str, str]) -> dict[str, str]:
    """The environment of the trainer: the CLI's locations as defaults under the trainer's own variables."""
    env = dict(environ)
    env.setdefault("BAILU_TRAINER_DATASET_DIR", str(settings.dataset_dir))
    env.setdefault("BAILU_TRAINER_REGISTRY_DIR", str(settings.registry_dir))
    # Only a Redis that answers: the trainer then indexes and announces what it publishes.
    if "BAILU_TRAINER_REDIS_URL" not in env and settings.redis_url and asyncio.run(_answers(settings.redis_url)):
        env["BAILU_TRAINER_REDIS_URL"] = settings.redis_url
    return env


async def _answers(url: str) -> bool:
    client = await connect_or_warn(url, WITHOUT_REDIS)
    if client is None:
        return False
    await client.aclose()
    return True


def run_trainer(settings: CliSettings, trainer_args: list[str]) -> int:
    argv = [sys.executable, "-m", TRAINER_MODULE, *trainer_args]
    env = trainer_env(settings, dict(os.environ))
    try:
        process = subprocess.Popen(argv, env=env)  # nosec B603 # an argv list, no shell: the operator's arguments
    except OSError as exc:
        raise CliError(f"cannot start the trainer: {exc}") from exc
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the trainer too (same process group): let it stop and report its own status.
        code = process.wait()
    # A trainer killed by a signal exits as a shell reports it: 128 + the signal's number.
    return code if code >= 0 else 128 + signal.Signals(-code).value
