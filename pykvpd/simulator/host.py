"""The host half of the simulator: the Hyper-V management view of one VM's KVP exchange.

Mirrors what an administrator calls on a Hyper-V host (AddKvpItems, ModifyKvpItems,
RemoveKvpItems on the External pool, the GuestParameters push into pool 3, reading the
guest's intrinsic and guest-written items, GET/SET of IP information) and reports results the
way the host does: ``Msvm_KvpExchangeDataItem``-like records with Name, Data and Source.

Every call becomes one or more requests through the FakeKernel, which does the UTF-16 <->
UTF-8 conversions; failures surface as HostError carrying the status the host received.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

from pykvpd import protocol as p
from pykvpd.simulator.conversion import HOST_KEY_FIELD_UNITS, HOST_VALUE_FIELD_UNITS, utf16_units
from pykvpd.simulator.kernel import FakeKernel
from pykvpd.simulator.messages import HostReply, HostRequest, status_name

# Host-side failures that never reach the wire (HRESULTs as the host reports them).
HV_ERROR_ALREADY_EXISTS = 0x80070050  # in the uapi header; AddKvpItems of an existing key
E_NOT_FOUND = 0x80070490  # HRESULT_FROM_WIN32(ERROR_NOT_FOUND); ModifyKvpItems of an unknown key

_LOCAL_NAMES = {HV_ERROR_ALREADY_EXISTS: "HV_ERROR_ALREADY_EXISTS", E_NOT_FOUND: "E_NOT_FOUND"}

# Msvm_KvpExchangeDataItem.Source values (MSDOC); 3 is the pool-3 (GuestParameters) source,
# which the documentation does not list.
SOURCE_HOST = 0
SOURCE_GUEST = 1
SOURCE_GUEST_INTRINSIC = 2
SOURCE_HOST_PARAMETERS = 3
SOURCE_HOST_ONLY = 4

MAX_ENUMERATION = 100_000  # safety stop against a daemon that never ends an enumeration

DEFAULT_VM_ID = "8F2C6A1E-3B7D-4C59-9E10-5A4B3C2D1E0F"

# Pool 3 as a host pushes it at connect time (spec §1.2); values are plausible defaults.
DEFAULT_GUEST_PARAMETERS: Dict[str, str] = {
    "HostName": "SIMHOST01",
    "HostingSystemEditionId": "8",
    "HostingSystemNestedLevel": "0",
    "HostingSystemOsMajor": "10",
    "HostingSystemOsMinor": "0",
    "HostingSystemProcessorArchitecture": "9",
    "HostingSystemProcessorIdleStateMax": "0",
    "HostingSystemProcessorThrottleMax": "100",
    "HostingSystemProcessorThrottleMin": "5",
    "HostingSystemSpMajor": "0",
    "HostingSystemSpMinor": "0",
    "PhysicalHostName": "SIMHOST01",
    "PhysicalHostNameFullyQualified": "simhost01.example.test",
    "VirtualMachineDynamicMemoryBalancingEnabled": "0",
    "VirtualMachineId": DEFAULT_VM_ID,
    "VirtualMachineName": "pykvpd-sim",
}


@dataclass(frozen=True)
class RegValue:
    """A value with an explicit registry type, e.g. ``RegValue(5, 11)`` (Windows REG_QWORD)."""

    value: Union[str, int]
    value_type: int


Value = Union[str, int, RegValue]


@dataclass(frozen=True)
class Item:
    """One Msvm_KvpExchangeDataItem: Name, Data, Source."""

    name: str
    data: str
    source: int

    def as_dict(self) -> dict:
        return {"Name": self.name, "Data": self.data, "Source": self.source}


class HostError(Exception):
    """A host operation failed; ``status`` is what the host received (or decided locally)."""

    def __init__(
        self,
        status: int,
        message: str,
        partial: Optional[List[Item]] = None,
        detail: str = "",
    ) -> None:
        self.status = status
        self.status_name = _LOCAL_NAMES.get(status) or status_name(status)
        self.partial = partial or []  # items enumerated before the failure
        why = f" ({detail})" if detail else ""  # the kernel's own reason, e.g. no daemon
        super().__init__(f"{message}: {self.status_name}{why}")


def typed(value: Value) -> Tuple[Union[str, int], int]:
    """(value, value_type) as the host sends it: str -> REG_SZ, int -> REG_U32 or REG_U64."""
    if isinstance(value, RegValue):
        return value.value, value.value_type
    if isinstance(value, bool):
        raise TypeError("bool is not a KVP value; use 0/1 or a string")
    if isinstance(value, int):
        if -(1 << 31) <= value < (1 << 32):
            return value, p.REG_U32
        if -(1 << 63) <= value < (1 << 64):
            return value, p.REG_U64
        raise ValueError(f"integer {value} does not fit in 64 bits")
    if isinstance(value, str):
        return value, p.REG_SZ
    raise TypeError(f"KVP values are str or int, not {type(value).__name__}")


def display(value: Value) -> str:
    """How the host shows a value it added (its own record, not the guest's)."""
    raw, _ = typed(value)
    return str(raw)


def _check_fits(name: str, value: Value) -> None:
    """The host's UTF-16 fields hold 255 key and 1023 value units plus the NUL."""
    if len(utf16_units(name)) >= HOST_KEY_FIELD_UNITS:
        limit = HOST_KEY_FIELD_UNITS - 1
        raise ValueError(f"key {name[:20]!r}... longer than {limit} UTF-16 units")
    raw, value_type = typed(value)
    if value_type == p.REG_SZ and len(utf16_units(str(raw))) >= HOST_VALUE_FIELD_UNITS:
        raise ValueError(f"value of {name!r} longer than {HOST_VALUE_FIELD_UNITS - 1} UTF-16 units")


def _mac_adapter_id(mac: str) -> str:
    """The host sends MACs upper-case with colons (spec §11: inferred)."""
    return mac.replace("-", ":").upper()


class Host:
    """The Hyper-V management view of one VM, talking through ``kernel``.

    The host keeps its own record of what it added to the External pool (like the VM's
    HostExchangeItems setting), independent of what the guest's file holds.
    """

    def __init__(
        self,
        kernel: FakeKernel,
        guest_parameters: Optional[Mapping[str, Value]] = None,
        timeout: Optional[float] = None,
    ) -> None:
        self.kernel = kernel
        self.timeout = timeout
        self.guest_parameters: Dict[str, Value] = dict(DEFAULT_GUEST_PARAMETERS)
        if guest_parameters:
            self.guest_parameters.update(guest_parameters)
        self.last_detail = ""  # why the kernel failed the last request itself, if it did
        self._external: Dict[str, Value] = {}
        self._host_only: Dict[str, Value] = {}

    # ------------------------------------------------------------------ raw requests

    def request(self, request: HostRequest) -> HostReply:
        """One request on the channel; the reply as the host received it."""
        reply = self.kernel.submit(request, self.timeout)
        self.last_detail = reply.detail
        return reply

    def _set(self, pool: int, name: str, value: Value) -> None:
        _check_fits(name, value)
        raw, value_type = typed(value)
        reply = self.request(HostRequest(p.OP_SET, pool, name, raw, value_type))
        if reply.status != p.HV_S_OK:
            raise HostError(
                reply.status, f"SET {name!r} in pool {pool} failed", detail=reply.detail
            )

    def _delete(self, pool: int, name: str) -> None:
        reply = self.request(HostRequest(p.OP_DELETE, pool, name))
        if reply.status != p.HV_S_OK:
            raise HostError(
                reply.status, f"DELETE {name!r} in pool {pool} failed", detail=reply.detail
            )

    # ------------------------------------------------------------------ External pool (0)

    def add_kvp_items(self, items: Mapping[str, Value]) -> None:
        """AddKvpItems: fails for a key the host already added; in order, stops at a failure."""
        for name, value in items.items():
            if name in self._external:
                raise HostError(HV_ERROR_ALREADY_EXISTS, f"AddKvpItems {name!r}")
            self._set(p.POOL_EXTERNAL, name, value)
            self._external[name] = value

    def modify_kvp_items(self, items: Mapping[str, Value]) -> None:
        """ModifyKvpItems: only for keys the host added before."""
        for name, value in items.items():
            if name not in self._external:
                raise HostError(E_NOT_FOUND, f"ModifyKvpItems {name!r}")
            self._set(p.POOL_EXTERNAL, name, value)
            self._external[name] = value

    def remove_kvp_items(self, names: Iterable[str]) -> None:
        """RemoveKvpItems: DELETE in the guest; the host forgets the key whatever the guest says.

        A key the host never added is still sent (so stale guest keys can be removed); the
        guest's HV_S_CONT for a key its file does not hold raises HostError.
        """
        for name in names:
            self._external.pop(name, None)
            self._delete(p.POOL_EXTERNAL, name)

    def external_items(self) -> List[Item]:
        """The host's own record of the External pool (Source 0)."""
        return [Item(n, display(v), SOURCE_HOST) for n, v in self._external.items()]

    def add_host_only_items(self, items: Mapping[str, Value]) -> None:
        """HostOnlyItems: kept on the host, never sent to the guest (Source 4)."""
        for name, value in items.items():
            typed(value)
            self._host_only[name] = value

    def host_only_items(self) -> List[Item]:
        return [Item(n, display(v), SOURCE_HOST_ONLY) for n, v in self._host_only.items()]

    # ------------------------------------------------------------------ GuestParameters (3)

    def push_guest_parameters(self, values: Optional[Mapping[str, Value]] = None) -> List[Item]:
        """SET every GuestParameters key into pool 3, as the host does when the VM connects.

        ``values`` overrides the configured parameters for this push and is remembered.
        """
        if values:
            self.guest_parameters.update(values)
        pushed = []
        for name, value in self.guest_parameters.items():
            self._set(p.POOL_AUTO_EXTERNAL, name, value)
            pushed.append(Item(name, display(value), SOURCE_HOST_PARAMETERS))
        return pushed

    # ------------------------------------------------------------------ reading the guest

    def enumerate_with_status(self, pool: int) -> Tuple[List[Item], int]:
        """ENUMERATE ``pool`` from index 0 until a non-OK status; the items and that status."""
        items: List[Item] = []
        for index in range(MAX_ENUMERATION):
            reply = self.request(HostRequest(p.OP_ENUMERATE, pool, index=index))
            if reply.status != p.HV_S_OK:
                return items, reply.status
            items.append(Item(reply.key, reply.value, pool))
        return items, p.HV_S_OK

    def enumerate(self, pool: int) -> List[Item]:
        """All items of a guest pool; Source = the pool number (0..3 as the host labels them).

        The host treats HV_S_CONT as the end; any other status ends the enumeration as a
        failure (HostError, with the items read so far in ``partial``).
        """
        items, status = self.enumerate_with_status(pool)
        if status != p.HV_S_CONT:
            raise HostError(
                status,
                f"enumeration of pool {pool} stopped after {len(items)} items",
                partial=items,
                detail=self.last_detail,
            )
        return items

    def guest_intrinsic_items(self) -> List[Item]:
        """GuestIntrinsicExchangeItems: the Auto pool (2) the guest generates."""
        return self.enumerate(p.POOL_AUTO)

    def guest_items(self) -> List[Item]:
        """GuestExchangeItems: what guest software wrote to pool 1."""
        return self.enumerate(p.POOL_GUEST)

    def get(self, pool: int, name: str) -> Item:
        """GET one key (not issued by real Hyper-V; the C daemon answers it with an empty value)."""
        reply = self.request(HostRequest(p.OP_GET, pool, name))
        if reply.status != p.HV_S_OK:
            raise HostError(
                reply.status, f"GET {name!r} in pool {pool} failed", detail=reply.detail
            )
        return Item(name, reply.value, pool)

    # ------------------------------------------------------------------ IP information

    def get_ip_info(self, mac: str, addr_family: int = p.ADDR_FAMILY_NONE) -> p.IpInfo:
        """GET_IP_INFO for the adapter with this MAC (sent upper-case, colon-separated)."""
        info = p.IpInfo(adapter_id=_mac_adapter_id(mac), addr_family=addr_family)
        reply = self.request(HostRequest(p.OP_GET_IP_INFO, p.POOL_GUEST, ip=info))
        if reply.status != p.HV_S_OK or reply.ip is None:
            raise HostError(reply.status, f"GET_IP_INFO {info.adapter_id}", detail=reply.detail)
        return reply.ip

    def set_ip_info(
        self,
        adapter_id: str,
        ip_addr: str = "",
        sub_net: str = "",
        gate_way: str = "",
        dns_addr: str = "",
        dhcp_enabled: bool = False,
        addr_family: Optional[int] = None,
    ) -> None:
        """SET_IP_INFO for the adapter with this VMBus GUID (``{...}`` lower-case on Hyper-V)."""
        if addr_family is None:
            addr_family = _families(ip_addr)
        info = p.IpInfo(
            adapter_id=adapter_id,
            addr_family=addr_family,
            dhcp_enabled=1 if dhcp_enabled else 0,
            ip_addr=ip_addr,
            sub_net=sub_net,
            gate_way=gate_way,
            dns_addr=dns_addr,
        )
        reply = self.request(HostRequest(p.OP_SET_IP_INFO, p.POOL_GUEST, ip=info))
        if reply.status != p.HV_S_OK:
            raise HostError(reply.status, f"SET_IP_INFO {adapter_id}", detail=reply.detail)


def _families(ip_list: str) -> int:
    """addr_family bits for a ``;``-separated address list."""
    bits = p.ADDR_FAMILY_NONE
    for address in filter(None, (a.strip() for a in ip_list.split(";"))):
        bits |= p.ADDR_FAMILY_IPV6 if ":" in address else p.ADDR_FAMILY_IPV4
    return bits


def new_vm_id() -> str:
    """A fresh VirtualMachineId in the host's upper-case GUID form."""
    return str(uuid.uuid4()).upper()
