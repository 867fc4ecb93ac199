"""`python -m bailu.cli` (the `bailu` console script)."""

import sys

from bailu.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
