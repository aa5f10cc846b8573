"""lazylog: a logger that imports logging on its first message, and the set-up run before it.

Each check that needs logging not yet imported runs in a new interpreter (pytest imports it),
with ``-S`` and from the source tree: no site-packages hook imports anything first.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from pykvpd import lazylog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> list:
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return done.stdout.splitlines()


def test_a_lazy_logger_imports_logging_only_when_used():
    assert _run(
        "import sys\n"
        "from pykvpd.lazylog import LazyLogger\n"
        "log = LazyLogger('pykvpd.example')\n"
        "print(repr(log), log.name, 'logging' in sys.modules)\n"
        "log.debug('not shown')\n"
        "print('logging' in sys.modules, log.isEnabledFor(30))\n"
    ) == ["<LazyLogger pykvpd.example> pykvpd.example False", "True True"]


def test_first_use_runs_the_set_up_once_before_the_message_reaches_the_real_logger():
    """``kvp`` installs its handler through ``when_first_used``: the first message must find it
    there, and later messages (from any lazy logger) must not install it again."""
    assert _run(
        "import sys\n"
        "from pykvpd.lazylog import LazyLogger, when_first_used\n"
        "seen = []\n"
        "def setup():\n"
        "    import logging\n"
        "    class Keep(logging.Handler):\n"
        "        def emit(self, record):\n"
        "            seen.append(record.name + ': ' + record.getMessage())\n"
        "    logging.getLogger('pykvpd.example').addHandler(Keep())\n"
        "    seen.append('set up')\n"
        "first, other = LazyLogger('pykvpd.example'), LazyLogger('pykvpd.other')\n"
        "when_first_used(setup)\n"
        "print(seen, 'logging' in sys.modules)\n"
        "first.warning('one %d', 1)\n"
        "other.warning('elsewhere')\n"
        "first.warning('two')\n"
        "print(seen)\n"
    ) == [
        "[] False",
        "['set up', 'pykvpd.example: one 1', 'pykvpd.example: two']",
    ]


def test_the_set_up_runs_at_once_when_logging_is_already_imported():
    """Then any module may log at any moment (``kvp watch`` uses logging directly)."""
    assert "logging" in sys.modules  # pytest's own import, as in a program that uses logging
    calls = []
    lazylog.when_first_used(lambda: calls.append("set up"))
    assert calls == ["set up"]
    log = lazylog.LazyLogger("pykvpd.example")
    log.info("a message")  # the set-up has run: it does not run again
    assert calls == ["set up"]
    assert log.getEffectiveLevel() == logging.getLogger("pykvpd.example").getEffectiveLevel()
