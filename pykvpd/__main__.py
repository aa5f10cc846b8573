"""``python -m pykvpd``: the daemon (and its ``simulate``/``status`` subcommands)."""

import sys

from .startup import main

sys.exit(main())
