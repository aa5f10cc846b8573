"""Shared test set-up: run the package from the source tree."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config) -> None:  # noqa: ANN001
    config.addinivalue_line(
        "markers",
        "main_run_only(reason): skipped in the CPython 3.9 run (scripts/test-py39.sh); the reason"
        " says why the test cannot run there",
    )


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    """In the 3.9 run (PYKVPD_TEST_RUN=py39), skip each ``main_run_only`` test with its reason."""
    if os.environ.get("PYKVPD_TEST_RUN") != "py39":
        return
    import pytest

    for item in items:
        marker = item.get_closest_marker("main_run_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            if not reason:
                raise pytest.UsageError(f"{item.nodeid}: main_run_only needs a reason")
            item.add_marker(pytest.mark.skip(reason=f"main run only: {reason}"))


@pytest.fixture(scope="module")
def deb() -> str:
    """The pykvpd .deb that the real-systemd tests install into a booted container."""
    import nspawn

    nspawn.require()
    try:
        return nspawn.build_deb()
    except nspawn.DebBuildUnavailable as exc:
        pytest.fail(f"cannot build the .deb the container tests install: {exc}")
