"""The model registry: versions of base models, adapters and exports on shared storage, with
manifests, aliases and a canary weight (`Registry`), a Redis index and change events
(`RegistryIndex`), both together for async callers (`ModelRegistry`), and the one way to follow the
change events (`EventFollower`)."""

from bailu.registry.errors import InvalidRegistryOperation, VersionNotFound
from bailu.registry.events import RegistryEvent
from bailu.registry.follow import EventFollower
from bailu.registry.hashing import hash_dir
from bailu.registry.index import RegistryIndex
from bailu.registry.model import Aliases, Manifest, Version
from bailu.registry.service import ModelRegistry
from bailu.registry.store import NameState, Registry

__all__ = [
    "Aliases",
    "EventFollower",
    "InvalidRegistryOperation",
    "Manifest",
    "ModelRegistry",
    "NameState",
    "Registry",
    "RegistryEvent",
    "RegistryIndex",
    "Version",
    "VersionNotFound",
    "hash_dir",
]
