"""The simulator driving the real daemon process: the host view and the guest files agree.

Each test runs ``python -m pykvpd -n --device SOCKET --pool-dir DIR`` in a temporary directory
(SimulatedGuest) and checks what the host receives and the exact bytes in the pool files.
"""

from __future__ import annotations

import os
import signal

import pytest

from pykvpd import protocol as p
from pykvpd.simulator.guestview import RECORD_SIZE, pool_path, read_pool
from pykvpd.simulator.host import HV_ERROR_ALREADY_EXISTS, HostError, Item, RegValue
from pykvpd.simulator.messages import HostRequest
from pykvpd.simulator.runner import SimulatedGuest, run_guest_tool

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "pykvpd", "daemon.py")),
    reason="the daemon is not in this tree",
)


@pytest.fixture
def vm(tmp_path):
    guest = SimulatedGuest(workdir=str(tmp_path), timeout=10.0).start()
    yield guest
    guest.close()


def file_bytes(vm: SimulatedGuest, pool: int) -> bytes:
    with open(pool_path(vm.pool_dir, pool), "rb") as handle:
        return handle.read()


def record(key: bytes, value: bytes) -> bytes:
    return key.ljust(p.MAX_KEY_SIZE, b"\0") + value.ljust(p.MAX_VALUE_SIZE, b"\0")


def test_host_items_land_in_pool_0_byte_for_byte(vm):
    vm.host.add_kvp_items({"Environment": "production", "Count": 42})
    assert file_bytes(vm, 0) == record(b"Environment", b"production") + record(b"Count", b"42")
    with pytest.raises(HostError) as err:
        vm.host.add_kvp_items({"Environment": "x"})
    assert err.value.status == HV_ERROR_ALREADY_EXISTS
    vm.host.modify_kvp_items({"Environment": "prod"})
    assert read_pool(vm.pool_dir, 0) == [("Environment", "prod"), ("Count", "42")]
    assert file_bytes(vm, 0)[:RECORD_SIZE] == record(b"Environment", b"prod")  # zero-filled
    vm.host.remove_kvp_items(["Environment"])
    assert read_pool(vm.pool_dir, 0) == [("Count", "42")]
    assert vm.host.enumerate(0) == [Item("Count", "42", 0)]


def test_guest_parameters_and_intrinsic_items(vm):
    pushed = vm.host.push_guest_parameters({"VirtualMachineName": "e2e-vm"})
    assert read_pool(vm.pool_dir, 3) == [(i.name, i.data) for i in pushed]
    assert ("VirtualMachineName", "e2e-vm") in read_pool(vm.pool_dir, 3)
    intrinsic = vm.host.guest_intrinsic_items()
    names = [i.name for i in intrinsic]
    assert names == [
        "FullyQualifiedDomainName",
        "IntegrationServicesVersion",
        "NetworkAddressIPv4",
        "NetworkAddressIPv6",
        "OSBuildNumber",
        "OSName",
        "OSMajorVersion",
        "OSMinorVersion",
        "OSVersion",
        "ProcessorArchitecture",
    ]
    assert Item("IntegrationServicesVersion", "3.1", 2) in intrinsic
    assert Item("ProcessorArchitecture", os.uname().machine, 2) in intrinsic
    assert Item("OSBuildNumber", os.uname().release, 2) in intrinsic


def test_guest_writes_are_seen_by_the_host(vm):
    run_guest_tool(vm.pool_dir, ["set", "DeploymentState", "ready"])
    run_guest_tool(vm.pool_dir, ["set", "Phase", "2"])
    assert vm.host.guest_items() == [Item("DeploymentState", "ready", 1), Item("Phase", "2", 1)]
    run_guest_tool(vm.pool_dir, ["delete", "DeploymentState"])
    assert vm.host.guest_items() == [Item("Phase", "2", 1)]


def test_kernel_conversions_reach_the_file(vm):
    vm.host.add_kvp_items(
        {
            "Lone\ud800Surrogate": "caf\u00e9 \U0001f600",
            "u32": RegValue(-1, p.REG_U32),
            "qword": RegValue(5, 11),
        }
    )
    assert read_pool(vm.pool_dir, 0) == [
        ("LoneSurrogate", "café 😀"),
        ("u32", "4294967295"),
        ("qword", ""),  # an unknown type arrives with value_size 0: stored empty
    ]
    assert vm.host.enumerate(0)[0] == Item("LoneSurrogate", "café 😀", 0)


def test_get_returns_the_value(vm):
    vm.host.add_kvp_items({"Key": "value"})
    assert vm.host.get(0, "Key") == Item("Key", "value", 0)  # C daemon: empty (documented)
    with pytest.raises(HostError) as err:
        vm.host.get(0, "Missing")
    assert err.value.status_name == "HV_S_CONT"


def test_long_values_reach_the_host_truncated_to_1022_units(vm):
    from pykvpd.store import PoolDir

    # other guest software (the kvp tool refuses this without --unsafe)
    PoolDir(vm.pool_dir).pool(1).set("Long", "x" * 1500)
    item = vm.host.guest_items()[0]
    assert item.data == "x" * 1022


def test_daemon_reopens_after_the_kernel_drops_it(vm):
    vm.host.add_kvp_items({"Before": "1"})
    assert vm.kernel.drop_connection("simulated module reload")
    assert vm.kernel.wait_registered(10, registrations=2)
    vm.host.add_kvp_items({"After": "2"})
    assert read_pool(vm.pool_dir, 0) == [("Before", "1"), ("After", "2")]


def test_a_stopped_daemon_times_out_then_recovers(tmp_path):
    with SimulatedGuest(workdir=str(tmp_path), timeout=0.5) as vm:
        assert vm.process is not None
        os.kill(vm.process.pid, signal.SIGSTOP)
        try:
            reply = vm.kernel.submit(HostRequest(p.OP_SET, 0, "k", "v"))
        finally:
            os.kill(vm.process.pid, signal.SIGCONT)
        assert reply.status == p.HV_E_FAIL and vm.kernel.timeouts == 1
        # its late reply is spurious (EINVAL): the daemon must reopen and register again
        assert vm.kernel.wait_registered(10, registrations=2)
        assert vm.kernel.submit(HostRequest(p.OP_ENUMERATE, 0)).status in (p.HV_S_OK, p.HV_S_CONT)


def test_sigterm_stops_the_daemon_cleanly(vm):
    vm.host.add_kvp_items({"k": "v"})
    assert vm.stop_daemon(signal.SIGTERM) == 0
    assert read_pool(vm.pool_dir, 0) == [("k", "v")]
    vm.start_daemon()
    assert vm.kernel.registrations == 2
    assert vm.host.enumerate(0) == [Item("k", "v", 0)]


# --------------------------------------------------------------------------- same host view


def host_session(kernel, pool_dir: str):
    """One host session; returns (outcome per step, host view of pools 0, 1 and 3)."""
    from pykvpd.simulator.host import Host

    host = Host(kernel)
    outcomes = []

    def step(name, action):
        try:
            action()
            outcomes.append((name, "ok"))
        except HostError as exc:
            outcomes.append((name, exc.status_name))

    step("push", lambda: host.push_guest_parameters({"VirtualMachineName": "diff-vm"}))
    items = {"Env": "prod", "Count": 42, "Big": 2**40, "Uni": "caf\u00e9 \U0001f600 \ud800x"}
    step("add", lambda: host.add_kvp_items(items))
    step("add again", lambda: host.add_kvp_items({"Env": "again"}))
    step("modify", lambda: host.modify_kvp_items({"Env": "staging"}))
    step("remove", lambda: host.remove_kvp_items(["Count"]))
    step("remove missing", lambda: host.remove_kvp_items(["Missing"]))
    run_guest_tool(pool_dir, ["set", "DeploymentState", "ready"])
    views = {pool: host.enumerate(pool) for pool in (0, 1, 3)}
    return outcomes, views


def test_same_host_view_with_debians_daemon(tmp_path):
    """The issue's bar: one host session, our daemon and Debian's, the same host view."""
    from cdaemon import HarnessUnavailable, KvpPeer

    try:
        c_peer = KvpPeer.c(str(tmp_path / "c"))
    except HarnessUnavailable as exc:
        pytest.skip(str(exc))
    os.makedirs(tmp_path / "c", exist_ok=True)
    os.makedirs(tmp_path / "py", exist_ok=True)
    with c_peer as c, KvpPeer.py(str(tmp_path / "py")) as ours:
        c_outcomes, c_views = host_session(c.kernel, c.pool_dir)
        py_outcomes, py_views = host_session(ours.kernel, ours.pool_dir)
    assert py_outcomes == c_outcomes
    assert c_outcomes[-1] == ("remove missing", "HV_S_CONT")
    # The host builds a dictionary; after a DELETE our enumeration order differs (C14).
    assert {n: sorted(v, key=repr) for n, v in py_views.items()} == {
        n: sorted(v, key=repr) for n, v in c_views.items()
    }
    assert c_views[0] == [
        Item("Env", "staging", 0),
        Item("Big", "1099511627776", 0),
        Item("Uni", "café 😀 x", 0),
    ]
    assert c_views[1] == [Item("DeploymentState", "ready", 1)]
    assert Item("VirtualMachineName", "diff-vm", 3) in c_views[3]
