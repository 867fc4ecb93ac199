"""`python -m bailu.trainer [--flag value ...] [--json]`: one training run (see `bailu.trainer.cli`)."""

from __future__ import annotations

import sys

from bailu.trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
