"""``python -m pykvpd``: the daemon (and its ``simulate``/``status`` subcommands)."""

import sys

from .daemon import main

sys.exit(main())
