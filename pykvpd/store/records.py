"""The pool file format: limits, pool names, and one record's bytes decoded and encoded.

A record is a 512-byte key plus a 2048-byte value, NUL-terminated UTF-8, zero-filled after the
NUL (the C daemon leaves stale tails and heap bytes there). No header, no count. These limits
belong to the file format; the wire codec (``protocol``) imports them from here.
"""

from __future__ import annotations

from operator import itemgetter

from .errors import InvalidRecord, RecordTooLarge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Sequence, Tuple, Union

    Text = Union[str, bytes]  # at run time ``pykvpd.store.Text`` (its lazy __getattr__)

MAX_KEY_SIZE = 512
MAX_VALUE_SIZE = 2048
POOL_COUNT = 5

# What the host reads back whole after the kernel's UTF-16 conversion (254 and 1022 UTF-16
# units; a UTF-8 byte is never more than one unit): the default limits of validated writes.
SAFE_KEY_BYTES = 254
SAFE_VALUE_BYTES = 1022

KEY_SIZE = MAX_KEY_SIZE
VALUE_SIZE = MAX_VALUE_SIZE
RECORD_SIZE = KEY_SIZE + VALUE_SIZE

POOL_NAMES = {
    "external": 0,
    "guest": 1,
    "auto": 2,
    "auto-external": 3,
    "auto-internal": 4,
}
POOL_LABELS = {number: name for name, number in POOL_NAMES.items()}


def pool_number(pool: Union[int, str]) -> int:
    """Map ``0..4`` or a pool name (``external``, ``guest``, ...) to the pool number."""
    if isinstance(pool, int):
        number = pool
    elif pool.isdigit():
        number = int(pool)
    elif pool.lower() in POOL_NAMES:
        return POOL_NAMES[pool.lower()]
    else:
        names = ", ".join(POOL_NAMES)
        raise ValueError(f"unknown pool {pool!r}: use 0..{POOL_COUNT - 1} or one of {names}")
    if not 0 <= number < POOL_COUNT:
        raise ValueError(f"pool {number} out of range 0..{POOL_COUNT - 1}")
    return number


def pool_filename(pool: Union[int, str]) -> str:
    """``.kvp_pool_<N>`` for a pool number or name (ValueError for one that does not exist)."""
    return f".kvp_pool_{pool_number(pool)}"


def as_bytes(text: Text) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


class _Named(tuple):
    """A tuple whose items also have names, as ``Record`` and ``PoolImage`` are (with a named
    tuple's ``_fields``, ``_replace`` and ``_asdict``).

    Written out rather than a ``typing.NamedTuple``, which imports typing and collections: about
    8 ms, a fifth of a ``kvp get`` (benchmarks/bench_cli.py). A subclass lists its names in
    ``_fields`` and reads them with ``itemgetter`` properties, as fast as a named tuple's.
    """

    __slots__ = ()
    _fields: Tuple[str, ...] = ()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={item!r}" for name, item in zip(self._fields, self))
        return f"{type(self).__name__}({shown})"

    def __getnewargs__(self) -> Tuple[object, ...]:
        return tuple(self)  # what copy and pickle pass to __new__

    def _replace(self, **changes: object) -> _Named:
        """A copy with some fields changed, as a named tuple's ``_replace``."""
        values = [changes.pop(name, item) for name, item in zip(self._fields, self)]
        if changes:
            raise ValueError(f"unexpected field names: {sorted(changes)}")
        return type(self)(*values)

    def _asdict(self) -> Dict[str, object]:
        """The fields by name, as a named tuple's ``_asdict``."""
        return dict(zip(self._fields, self))


class Record(_Named):
    """One decoded record. ``problem`` is None for a record every reader can use.

    ``key``/``value`` are the bytes before the first NUL of each field; for a field without a NUL
    they are the whole field, and ``problem`` says so.
    """

    __slots__ = ()
    _fields = ("key", "value", "problem")

    def __new__(cls, key: bytes, value: bytes, problem: Optional[str] = None) -> Record:
        return tuple.__new__(cls, (key, value, problem))

    if TYPE_CHECKING:
        key: bytes
        value: bytes
        problem: Optional[str]
    else:
        key = property(itemgetter(0))
        value = property(itemgetter(1))
        problem = property(itemgetter(2))

    @property
    def valid(self) -> bool:
        return self[2] is None

    @property
    def text_key(self) -> str:
        return self[0].decode("utf-8", "replace")

    @property
    def text_value(self) -> str:
        return self[1].decode("utf-8", "replace")


def _field(raw: bytes, what: str) -> Tuple[bytes, Optional[str]]:
    end = raw.find(b"\0")
    if end < 0:
        return raw, f"{what} has no NUL in its {len(raw)} bytes"
    text = raw[:end]
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return text, f"{what} is not valid UTF-8"
    return text, None


def decode_record(raw: bytes) -> Record:
    """Decode one 2560-byte record, keeping whatever is readable of a damaged one."""
    if len(raw) != RECORD_SIZE:
        raise ValueError(f"a record is {RECORD_SIZE} bytes, got {len(raw)}")
    key, key_problem = _field(raw[:KEY_SIZE], "key")
    value, value_problem = _field(raw[KEY_SIZE:], "value")
    return Record(key, value, key_problem or value_problem)


def encode_record(key: Text, value: Text) -> bytes:
    """A 2560-byte record, zero-filled after each NUL."""
    k, v = as_bytes(key), as_bytes(value)
    check_sizes(k, v)
    return k.ljust(KEY_SIZE, b"\0") + v.ljust(VALUE_SIZE, b"\0")


def check_sizes(key: bytes, value: bytes) -> None:
    """Raise RecordTooLarge naming the limit and the actual size."""
    if b"\0" in key:
        raise RecordTooLarge("key contains a NUL byte")
    if b"\0" in value:
        raise RecordTooLarge("value contains a NUL byte")
    if len(key) > KEY_SIZE - 1:
        raise RecordTooLarge(f"key is {len(key)} bytes; the limit is {KEY_SIZE - 1}")
    if len(value) > VALUE_SIZE - 1:
        raise RecordTooLarge(f"value is {len(value)} bytes; the limit is {VALUE_SIZE - 1}")


def check_field(raw: bytes, what: str, limit: int, hint: str = "") -> None:
    """Raise InvalidRecord unless ``raw`` is UTF-8 without NUL of at most ``limit`` bytes;
    ``hint`` is added to the message of a value that is too long."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raise InvalidRecord(f"{what} contains a NUL byte (at byte {nul})")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    if len(raw) > limit:
        raise InvalidRecord(f"{what} is {len(raw)} UTF-8 bytes; the limit is {limit}{hint}")


def validate(key: bytes, value: bytes, *, unsafe: bool = False) -> None:
    """Raise InvalidRecord unless every reader and the host can use this record: a non-empty
    key, UTF-8 without NUL, at most 254/1022 bytes (``unsafe``: the fields' 511/2047)."""
    if not key:
        raise InvalidRecord("key is empty")
    if unsafe:
        check_field(key, "key", KEY_SIZE - 1)
        check_field(value, "value", VALUE_SIZE - 1)
    else:
        hint = " (unsafe=True allows more, but the host may not see it whole)"
        check_field(key, "key", SAFE_KEY_BYTES, hint)
        check_field(value, "value", SAFE_VALUE_BYTES, hint)


def indexable(record: Record) -> bool:
    """Whether GET/SET/DELETE can find this record by its key (a key without NUL cannot)."""
    return not record.problem or not record.problem.startswith("key has no NUL")


class PoolImage(_Named):
    """Everything a reader can say about a pool file's bytes: its whole records, and the bytes
    of a partial record at the end (``trailing``: the size was not a multiple of 2560)."""

    __slots__ = ()
    _fields = ("records", "trailing")

    def __new__(cls, records: Tuple[Record, ...], trailing: bytes) -> PoolImage:
        return tuple.__new__(cls, (records, trailing))

    if TYPE_CHECKING:
        records: Tuple[Record, ...]
        trailing: bytes
    else:
        records = property(itemgetter(0))
        trailing = property(itemgetter(1))

    @property
    def problems(self) -> List[str]:
        found = [f"record {i}: {r.problem}" for i, r in enumerate(self.records) if r.problem]
        if self.trailing:
            found.append(
                f"partial record of {len(self.trailing)} bytes at offset "
                f"{len(self.records) * RECORD_SIZE}"
            )
        return found


def split_records(data: bytes) -> Tuple[List[bytes], bytes]:
    """A pool file's bytes as its whole 2560-byte records and the partial tail after them."""
    whole = len(data) - len(data) % RECORD_SIZE
    view = memoryview(data)
    return [bytes(view[o : o + RECORD_SIZE]) for o in range(0, whole, RECORD_SIZE)], data[whole:]


def decode_pool(data: bytes) -> PoolImage:
    """Decode a whole pool file; never raises, whatever the bytes."""
    raw, trailing = split_records(data)
    return PoolImage(tuple(decode_record(r) for r in raw), bytes(trailing))


def padded(partial: bytes) -> Record:
    """A partial trailing record as it reads once zero-padded to a whole record."""
    return decode_record(partial.ljust(RECORD_SIZE, b"\0"))


def all_valid(records: Sequence[Record]) -> bool:
    return all(r.problem is None for r in records)
