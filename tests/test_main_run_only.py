"""The ``main_run_only`` marker (tests/conftest.py): skipped, with its reason, only in the 3.9 run.

scripts/test-py39.sh sets ``PYKVPD_TEST_RUN=py39``; everywhere else a marked test runs. Checked
by running pytest on a throwaway test file next to a copy of this directory's conftest.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SAMPLE = '''
import pytest

@pytest.mark.main_run_only(reason="boots its own container")
def test_marked():
    pass

@pytest.mark.main_run_only
def test_marked_without_reason():
    pass

def test_plain():
    pass
'''


def _pytest(tmp_path, run: str, *select: str) -> subprocess.CompletedProcess:
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "PYKVPD_TEST_RUN"}
    if run:
        env["PYKVPD_TEST_RUN"] = run
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", *select],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_marked_test_skips_with_its_reason_in_the_py39_run(tmp_path):
    done = _pytest(tmp_path, "py39", "test_sample.py::test_marked", "test_sample.py::test_plain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    assert "main run only: boots its own container" in done.stdout


def test_marked_test_runs_in_the_main_run(tmp_path):
    done = _pytest(tmp_path, "", "test_sample.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_a_marker_without_reason_is_a_usage_error_in_the_py39_run(tmp_path):
    done = _pytest(tmp_path, "py39", "test_sample.py")
    assert done.returncode != 0
    assert "test_marked_without_reason: main_run_only needs a reason" in done.stdout + done.stderr



def test_container_tests_skip_by_name_in_the_py39_run(monkeypatch):
    """Every container test calls nspawn.require(); in the 3.9 run it skips, saying why, even
    under CI=true (where an unavailable nspawn fails the test instead)."""
    import nspawn
    import pytest

    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PYKVPD_TEST_RUN", "py39")
    with pytest.raises(pytest.skip.Exception, match="main run only: runs in the main .bookworm"):
        nspawn.require()
