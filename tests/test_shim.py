"""The C shim: it builds, its compile-time layout assertions bite, and the kernel header agrees
with every offset pykvpd.protocol hard-codes."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess

import pytest

from pykvpd import _shim_build, protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM_C = os.path.join(ROOT, "csrc", "hv_kvp_shim.c")
CC = os.environ.get("CC", "gcc")


def _syntax_check(source: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CC, "-std=gnu11", "-Wall", "-Werror", "-fsyntax-only", *flags, source],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_shim_builds_and_reports_the_message_size(tmp_path):
    so_path = _shim_build.build(str(tmp_path))
    assert os.path.basename(os.path.dirname(so_path)) == "pykvpd"
    name = "pykvpd._hv_kvp_shim"
    loader = importlib.machinery.ExtensionFileLoader(name, so_path)
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(name, so_path, loader=loader)
    )
    loader.exec_module(module)
    assert module.lib.hvkvp_msg_size() == protocol.MSG_SIZE == 7432
    assert module.lib.HVKVP_READ_CAPACITY > protocol.MSG_SIZE
    assert module.lib.hvkvp_open(b"/nonexistent/hv_kvp") == -2  # -ENOENT, not -1 with errno


def test_shim_source_compiles_cleanly():
    result = _syntax_check(SHIM_C)
    assert result.returncode == 0, result.stderr


def test_wrong_message_size_fails_to_compile():
    result = _syntax_check(SHIM_C, "-DHVKVP_EXPECTED_MSG_SIZE=7431")
    assert result.returncode != 0
    assert "static assertion failed" in result.stderr
    assert "sizeof(struct hv_kvp_msg)" in result.stderr


def test_wrong_offset_fails_to_compile(tmp_path):
    """A copy whose GET/ENUMERATE value offsets are swapped (the classic 528/532 mix-up)."""
    with open(SHIM_C) as f:
        source = f.read()
    good = "HVKVP_ASSERT_OFF(body.kvp_enum_data.data.value, 532);"
    assert good in source
    copy = tmp_path / "hv_kvp_shim_wrong.c"
    copy.write_text(source.replace(good, good.replace("532", "528")))
    result = _syntax_check(str(copy))
    assert result.returncode != 0
    assert "offset of body.kvp_enum_data.data.value is not 528" in result.stderr


# Every offset protocol.py relies on, as a member path of struct hv_kvp_msg.
MEMBERS = {
    "OFF_OPERATION": "kvp_hdr.operation",
    "OFF_POOL": "kvp_hdr.pool",
    "OFF_STATUS": "error",
    "OFF_SET_VALUE_TYPE": "body.kvp_set.data.value_type",
    "OFF_SET_KEY_SIZE": "body.kvp_set.data.key_size",
    "OFF_SET_VALUE_SIZE": "body.kvp_set.data.value_size",
    "OFF_SET_KEY": "body.kvp_set.data.key",
    "OFF_SET_VALUE": "body.kvp_set.data.value",
    "OFF_ENUM_INDEX": "body.kvp_enum_data.index",
    "OFF_ENUM_VALUE_TYPE": "body.kvp_enum_data.data.value_type",
    "OFF_ENUM_KEY_SIZE": "body.kvp_enum_data.data.key_size",
    "OFF_ENUM_VALUE_SIZE": "body.kvp_enum_data.data.value_size",
    "OFF_ENUM_KEY": "body.kvp_enum_data.data.key",
    "OFF_ENUM_VALUE": "body.kvp_enum_data.data.value",
    "OFF_DEL_KEY_SIZE": "body.kvp_delete.key_size",
    "OFF_DEL_KEY": "body.kvp_delete.key",
    "OFF_REG_VERSION": "body.kvp_register.version",
    "OFF_IP_ADAPTER_ID": "body.kvp_ip_val.adapter_id",
    "OFF_IP_ADDR_FAMILY": "body.kvp_ip_val.addr_family",
    "OFF_IP_DHCP_ENABLED": "body.kvp_ip_val.dhcp_enabled",
    "OFF_IP_ADDR": "body.kvp_ip_val.ip_addr",
    "OFF_IP_SUBNET": "body.kvp_ip_val.sub_net",
    "OFF_IP_GATEWAY": "body.kvp_ip_val.gate_way",
    "OFF_IP_DNS": "body.kvp_ip_val.dns_addr",
}
SIZES = {
    "MSG_SIZE": "sizeof(struct hv_kvp_msg)",
    "MAX_KEY_SIZE": "HV_KVP_EXCHANGE_MAX_KEY_SIZE",
    "MAX_VALUE_SIZE": "HV_KVP_EXCHANGE_MAX_VALUE_SIZE",
    "REG_VERSION_SIZE": "sizeof(M.body.kvp_register.version)",
    "IP_ADAPTER_ID_SIZE": "sizeof(M.body.kvp_ip_val.adapter_id)",
    "IP_ADDR_SIZE": "sizeof(M.body.kvp_ip_val.ip_addr)",
    "IP_SUBNET_SIZE": "sizeof(M.body.kvp_ip_val.sub_net)",
    "IP_GATEWAY_SIZE": "sizeof(M.body.kvp_ip_val.gate_way)",
    "IP_DNS_SIZE": "sizeof(M.body.kvp_ip_val.dns_addr)",
    "OP_REGISTER": "KVP_OP_REGISTER",
    "OP_REGISTER1": "KVP_OP_REGISTER1",
    "OP_SET_IP_INFO": "KVP_OP_SET_IP_INFO",
    "POOL_COUNT": "KVP_POOL_COUNT",
    "HV_S_CONT": "HV_S_CONT",
    "HV_E_FAIL": "HV_E_FAIL",
    "HV_INVALIDARG": "HV_INVALIDARG",
    "HV_GUID_NOTFOUND": "HV_GUID_NOTFOUND",
}


@pytest.fixture(scope="module")
def header_values(tmp_path_factory):
    """The values <linux/hyperv.h> gives, measured by a compiled program (independent of the
    shim's own assertions)."""
    tmp = tmp_path_factory.mktemp("layout")
    lines = [
        f'printf("{name} %lu\\n", (unsigned long)offsetof(struct hv_kvp_msg, {member}));'
        for name, member in MEMBERS.items()
    ]
    lines += [f'printf("{name} %lu\\n", (unsigned long)({expr}));' for name, expr in SIZES.items()]
    program = tmp / "layout.c"
    program.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/hyperv.h>\n"
        "static struct hv_kvp_msg M;\nint main(void) {\n" + "\n".join(lines) + "\nreturn 0; }\n"
    )
    exe = tmp / "layout"
    subprocess.run([CC, "-o", str(exe), str(program)], check=True, timeout=60)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("name", sorted(MEMBERS) + sorted(SIZES))
def test_protocol_constant_matches_kernel_header(header_values, name):
    assert getattr(protocol, name) == header_values[name]
