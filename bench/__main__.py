"""``python -m bench [--quick] [--only NAME[,NAME]]``: see the package docstring."""

from __future__ import annotations

import sys

from bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
