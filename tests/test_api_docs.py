"""docs/api.md: every example in it runs, as written, against a scratch pool directory."""

from __future__ import annotations

import doctest
import os

from test_cli_helpers import ROOT


def test_every_example_in_the_api_document_runs(tmp_path):
    pools = tmp_path / "hyperv"
    pools.mkdir()
    (pools / ".kvp_pool_1").write_bytes(b"")  # the guest pool, empty, as the daemon makes it
    result = doctest.testfile(
        os.path.join(ROOT, "docs", "api.md"),
        module_relative=False,
        globs={"pools": str(pools)},
        optionflags=doctest.ELLIPSIS,
        verbose=False,
        report=True,
    )
    assert result.attempted > 30
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed (above)"
