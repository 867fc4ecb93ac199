"""What a Hugging Face checkpoint directory is, checked the same way by the worker, the trainer and the tools."""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"


def is_checkpoint(path: str | Path) -> bool:
    """True when `path` holds a Hugging Face checkpoint (its `config.json`)."""
    return (Path(path) / CONFIG_FILE).is_file()


def require_checkpoint(path: str | Path) -> Path:
    """`path` as a Path; raises `FileNotFoundError` naming it when it holds no checkpoint."""
    path = Path(path)
    if not is_checkpoint(path):
        raise FileNotFoundError(f"no Hugging Face checkpoint at {path} ({CONFIG_FILE} missing)")
    return path
