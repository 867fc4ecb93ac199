"""The dataset contract between the collector (its writer) and the trainer and CLI (its readers), and the one
reader and writer API of it: the record formats (`format`: SFT examples and preference pairs in ms-swift's
formats), the files on disk (`store`: batches of shards, sealed versions with their manifests) and the
quality rules training text must pass (`quality`)."""

from bailu.datasets.format import KINDS, PREFERENCE, SFT, Example
from bailu.datasets.quality import QualityFilter
from bailu.datasets.store import DatasetStore

__all__ = ["KINDS", "PREFERENCE", "SFT", "DatasetStore", "Example", "QualityFilter"]
