"""Decides the reply to one host request: where a host SET lands, and what ENUMERATE returns.

The daemon loop hands every 7432-byte message to ``Handler.handle`` and writes back the reply it
returns. Nothing here touches the device; the pool files are reached through ``store`` and the
generated Auto pool through ``intrinsic``, so the whole decision is testable without a kernel.

Status mapping (spec §1.3, §9 row 28):
* malformed requests (no kernel would send them: bad length, unknown operation, pool >= 5, sizes
  outside the fields, strings without NUL) -> HV_E_FAIL; the C daemon crashed or misbehaved here;
* not found / end of enumeration / pool file failure -> HV_S_CONT, as the C daemon;
* IP operations that fail -> HV_E_FAIL (or the netconfig status).
"""

from __future__ import annotations

import logging
from typing import Optional, Protocol, Union

from . import protocol as p
from .store import PoolDir, PoolError

log = logging.getLogger(__name__)


class IntrinsicSource(Protocol):
    def item(self, index: int) -> Optional[tuple]: ...


class WriteRecorder(Protocol):
    def record(self, pool: int, key: bytes) -> None: ...


class NetConfigSource(Protocol):
    def get_ip_info(self, request: p.IpInfo) -> tuple: ...

    def set_ip_info(self, request: p.IpInfo) -> int: ...


Text = Union[str, bytes, None]


def _text(raw: Text) -> Optional[str]:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


class Outcome:
    """The reply to write plus what the daemon logs about it (values only when asked to).

    Key and value may be given as the raw bytes of the request or record: they are decoded
    only when read, which on the daemon's path means only when something is logged.
    """

    __slots__ = ("reply", "op", "status", "pool", "_key", "_value", "error")

    def __init__(
        self,
        reply: bytes,
        op: str,
        status: int,
        pool: Optional[int] = None,
        key: Text = None,
        value: Text = None,
        error: Optional[str] = None,
    ) -> None:
        self.reply, self.op, self.status, self.pool = reply, op, status, pool
        self._key, self._value, self.error = key, value, error

    @property
    def key(self) -> Optional[str]:
        return _text(self._key)

    @property
    def value(self) -> Optional[str]:
        return _text(self._value)

    def _fields(self) -> tuple:
        return (self.reply, self.op, self.status, self.pool, self.key, self.value, self.error)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        names = ("reply", "op", "status", "pool", "key", "value", "error")
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(names[1:], self._fields()[1:]))
        return f"Outcome({shown})"


class Handler:
    """Turns request bytes into reply bytes; never raises for anything the host can send."""

    def __init__(
        self,
        pools: PoolDir,
        intrinsic: IntrinsicSource,
        netconfig: Optional[NetConfigSource] = None,
        host_writes: Optional[WriteRecorder] = None,
    ) -> None:
        self.pools = pools
        self.intrinsic = intrinsic
        self.netconfig = netconfig
        self.host_writes = host_writes  # told of SETs that left a value as it was (watchers)

    def handle(self, msg: bytes) -> Outcome:
        try:
            request = p.decode_request(msg)
        except p.MalformedMessage as exc:
            op, pool = p.header(msg) if len(msg) >= 2 else (-1, None)
            name = p.OP_NAMES.get(op, f"op {op}")
            return Outcome(
                p.encode_status(msg, p.HV_E_FAIL), name, p.HV_E_FAIL, pool, None, None, str(exc)
            )
        if isinstance(request, p.EnumerateRequest):
            return self._enumerate(msg, request)
        if isinstance(request, p.IpRequest):
            return self._ip(msg, request)
        return self._key_op(msg, request)

    # ----------------------------------------------------------------- pools

    def _key_op(self, msg: bytes, req: p.KeyRequest) -> Outcome:
        name = p.OP_NAMES[req.op]
        key = req.key
        pool = self.pools.pool(req.pool)
        try:
            if req.op == p.OP_SET:
                writes = self.host_writes
                before = pool.get(req.key) if writes is not None else None
                pool.set(req.key, req.value)
                if before is not None and (req.value is None or req.value == before):
                    writes.record(req.pool, req.key)  # bytes unchanged: watchers see it here
                return Outcome(
                    p.encode_status(msg, p.HV_S_OK),
                    name,
                    p.HV_S_OK,
                    req.pool,
                    key,
                    req.value,
                )
            if req.op == p.OP_GET:
                value = pool.get(req.key)
                if value is None:
                    return Outcome(
                        p.encode_status(msg, p.HV_S_CONT), name, p.HV_S_CONT, req.pool, key
                    )
                return Outcome(
                    p.encode_value(msg, value), name, p.HV_S_OK, req.pool, key, value
                )
            found = pool.delete(req.key)
            status = p.HV_S_OK if found else p.HV_S_CONT
            return Outcome(p.encode_status(msg, status), name, status, req.pool, key)
        except PoolError as exc:
            return Outcome(
                p.encode_status(msg, p.HV_S_CONT), name, p.HV_S_CONT, req.pool, key, None, str(exc)
            )

    def _enumerate(self, msg: bytes, req: p.EnumerateRequest) -> Outcome:
        name = "ENUMERATE"
        if req.pool == p.POOL_AUTO:
            item = self.intrinsic.item(req.index)
            if item is None:
                return Outcome(p.encode_status(msg, p.HV_S_CONT), name, p.HV_S_CONT, req.pool)
            key, value = item
            reply = p.encode_key_value(msg, key.encode("utf-8"), value.encode("utf-8"))
            return Outcome(reply, name, p.HV_S_OK, req.pool, key, value)
        try:
            record = self.pools.pool(req.pool).enumerate(req.index)
        except PoolError as exc:
            return Outcome(
                p.encode_status(msg, p.HV_S_CONT), name, p.HV_S_CONT, req.pool, None, None, str(exc)
            )
        if record is None:
            return Outcome(p.encode_status(msg, p.HV_S_CONT), name, p.HV_S_CONT, req.pool)
        reply = p.encode_key_value(msg, record.key, record.value)
        return Outcome(reply, name, p.HV_S_OK, req.pool, record.key, record.value)

    # ----------------------------------------------------------------- IP configuration

    def _ip(self, msg: bytes, req: p.IpRequest) -> Outcome:
        name = p.OP_NAMES[req.op]
        if self.netconfig is None:
            error = "IP configuration is not available in this daemon"
            return Outcome(
                p.encode_status(msg, p.HV_E_FAIL),
                name,
                p.HV_E_FAIL,
                None,
                req.info.adapter_id,
                None,
                error,
            )
        if req.op == p.OP_GET_IP_INFO:
            status, info = self.netconfig.get_ip_info(req.info)
            if status == p.HV_S_OK and info is not None:
                return Outcome(p.encode_ip_info(msg, info), name, status, None, req.info.adapter_id)
            return Outcome(p.encode_status(msg, status), name, status, None, req.info.adapter_id)
        status = self.netconfig.set_ip_info(req.info)
        return Outcome(p.encode_status(msg, status), name, status, None, req.info.adapter_id)
