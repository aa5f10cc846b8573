"""``python -m pykvpd.cli``: the ``kvp`` tool."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
