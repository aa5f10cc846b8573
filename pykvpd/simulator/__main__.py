"""``python -m pykvpd.simulator``: same as ``pykvpd simulate``."""

from __future__ import annotations

import sys

from pykvpd.simulator.cli import main

sys.exit(main(sys.argv[1:]))
