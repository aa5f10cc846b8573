"""Real clients no one here wrote, against kvp and pykvpd.store.

cloud-init and WALinuxAgent come from Debian's packages, downloaded with ``apt-get download``
into ``$PYKVPD_DEB_CACHE`` (default /tmp/pykvpd-debs, reused across runs) and unpacked with
``dpkg-deb -x``. cloud-init is not on PyPI. Each client runs in its own process with the unpacked
``dist-packages`` first on ``sys.path``. Without network or apt the tests are skipped, saying why.

* cloud-init's ``HyperVKvpReportingHandler`` publishes events (one long enough to be split into
  ``|0..3`` parts) and ``kvp list --events`` reassembles them;
* cloud-init's own reader (``_iterate_kvps``) reads what ``kvp set`` wrote;
* WALinuxAgent's pool-0 reader (``RDMAHandler.get_rdma_version``) reads a key written with
  ``PoolDir(...).pool(0).set``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from test_cli_helpers import kvp

from pykvpd.store import PoolDir

PACKAGES = ("cloud-init", "waagent")


def _unavailable(reason: str) -> None:
    """Skip here, fail under CI: CI reaches Debian's mirrors and installs every dependency, so a
    skip there would hide a missing install step."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"real-client test cannot run in CI: {reason}")
    pytest.skip(reason)


def _download(cache: str) -> str:
    """Path of the cache with both .debs, or a skip reason."""
    os.makedirs(cache, exist_ok=True)
    missing = [p for p in PACKAGES if not glob.glob(os.path.join(cache, f"{p}_*.deb"))]
    if not missing:
        return cache
    if not shutil.which("apt-get"):
        _unavailable("apt-get not available to download " + ", ".join(missing))
    try:
        done = subprocess.run(
            ["apt-get", "download", *missing], cwd=cache, capture_output=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        _unavailable("apt-get download timed out (no network?)")
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        _unavailable(f"apt-get download {' '.join(missing)} failed: {reason[0]}")
    return cache


@pytest.fixture(scope="module")
def dist_packages(tmp_path_factory):
    if not shutil.which("dpkg-deb"):
        _unavailable("dpkg-deb not available")
    cache = _download(os.environ.get("PYKVPD_DEB_CACHE", "/tmp/pykvpd-debs"))
    root = tmp_path_factory.mktemp("debs")
    for package in PACKAGES:
        deb = sorted(glob.glob(os.path.join(cache, f"{package}_*.deb")))[-1]
        subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True)
    path = os.path.join(str(root), "usr", "lib", "python3", "dist-packages")
    assert os.path.isdir(os.path.join(path, "cloudinit"))
    return path


def _run_client(dist_packages: str, code: str, *args: str) -> str:
    script = f"import sys\nsys.path.insert(0, {dist_packages!r})\n" + code
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, timeout=120, text=True
    )
    if done.returncode != 0 and "ModuleNotFoundError" in done.stderr:
        _unavailable("a dependency of the client is missing: " + done.stderr.splitlines()[-1])
    assert done.returncode == 0, done.stderr
    return done.stdout


CLOUD_INIT_WRITER = """
from cloudinit.reporting import events
from cloudinit.reporting.handlers import HyperVKvpReportingHandler
handler = HyperVKvpReportingHandler(kvp_file_path=sys.argv[1])
handler.publish_event(events.ReportingEvent("start", "init-local", "starting", "init"))
handler.publish_event(events.FinishReportingEvent("init-local", "done", events.status.SUCCESS))
handler.publish_event(events.ReportingEvent("diagnostic", "azure-ds/dmesg", "Z" * 3000, "init"))
handler.flush()
"""

CLOUD_INIT_READER = """
import json
from cloudinit.reporting.handlers import HyperVKvpReportingHandler
handler = HyperVKvpReportingHandler(kvp_file_path=sys.argv[1])
print(json.dumps(list(handler._iterate_kvps(0))))
"""

WAAGENT_READER = """
import builtins, os
target = sys.argv[1]
real_open, real_isfile = builtins.open, os.path.isfile
HARD_CODED = "/var/lib/hyperv/.kvp_pool_0"
builtins.open = lambda p, *a, **k: real_open(target if p == HARD_CODED else p, *a, **k)
os.path.isfile = lambda p: real_isfile(target if p == HARD_CODED else p)
from azurelinuxagent.common.rdma import RDMAHandler
print(RDMAHandler().get_rdma_version())
"""


def test_cloud_init_events_reassembled_by_kvp(dist_packages, tmp_path):
    pool_dir = tmp_path / "hyperv"
    pool_dir.mkdir()
    path = str(pool_dir / ".kvp_pool_1")
    _run_client(dist_packages, CLOUD_INIT_WRITER, path)
    keys = [k for k, _ in _records(path)]
    assert len(keys) == 6 and sum(k.endswith(("|0", "|1", "|2", "|3")) for k in keys) == 4
    code, out, _err = kvp("--dir", str(pool_dir), "list", "--events", "--json")
    assert code == 0
    events = json.loads(out)["events"]
    assert [(e["fields"]["event_type"], e["fields"]["name"]) for e in events] == [
        ("start", "init-local"),
        ("finish", "init-local"),
        ("diagnostic", "azure-ds/dmesg"),
    ]
    assert events[2]["msg"] == "Z" * 3000 and events[2]["parts"] == 4 and events[2]["complete"]
    assert events[1]["fields"]["result"] == "SUCCESS"
    assert all(e["this_boot"] is True for e in events)  # incarnation = this boot's start
    assert kvp("--dir", str(pool_dir), "fsck")[0] == 0


def test_cloud_init_reader_reads_what_kvp_set_wrote(dist_packages, tmp_path):
    pool_dir = tmp_path / "hyperv"
    pool_dir.mkdir()
    assert kvp("--dir", str(pool_dir), "set", "PROVISIONING_REPORT", "result=success")[0] == 0
    assert kvp("--dir", str(pool_dir), "set", "Foo", "Bar")[0] == 0
    assert kvp("--dir", str(pool_dir), "set", "Foo", "B")[0] == 0  # C daemon would leave B\0r
    assert kvp("--dir", str(pool_dir), "set", "Unicode", "café ✓")[0] == 0
    out = _run_client(dist_packages, CLOUD_INIT_READER, str(pool_dir / ".kvp_pool_1"))
    assert json.loads(out) == [
        {"key": "PROVISIONING_REPORT", "value": "result=success"},
        {"key": "Foo", "value": "B"},
        {"key": "Unicode", "value": "café ✓"},
    ]


def test_waagent_reads_pool0_key_written_by_pools_api(dist_packages, tmp_path):
    pools = PoolDir(str(tmp_path / "hyperv"), create=True)
    pools.pool(0).set("Other", "x")
    pools.pool(0).set("NdDriverVersion", "142.0")
    pools.close()
    out = _run_client(dist_packages, WAAGENT_READER, str(tmp_path / "hyperv" / ".kvp_pool_0"))
    assert out.strip() == "142.0"


def _records(path: str):
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) % 2560 == 0
    return [
        (data[o : o + 512].split(b"\0")[0].decode(), data[o + 512 : o + 2560].split(b"\0")[0])
        for o in range(0, len(data), 2560)
    ]
