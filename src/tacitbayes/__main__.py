"""``python -m tacitbayes``: the command line (also ``torchrun --nproc-per-node W -m tacitbayes``)."""

from __future__ import annotations

import sys

from tacitbayes.cli import main

if __name__ == "__main__":
    sys.exit(main())
