"""A pool as a Python mapping of str to str: the API for programs other than the daemon.

``open_pool("guest")`` works for an unprivileged user without extra arguments (a pool that may
not be written is opened read-only), takes and returns ``str`` (``get_bytes`` where bytes are
wanted), refuses a pool name that does not exist, and validates every write the way ``kvp set``
does: no empty key, UTF-8 without NUL, and sizes the host can read back whole (``unsafe=True``
allows up to the file format's limits). Every call reads the file fresh under the pool's lock.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Tuple, Union

from .pooldir import DEFAULT_POOL_DIR, PoolDir
from .poolfile import PoolFile
from .records import POOL_LABELS, as_bytes, pool_number, validate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .records import Text

_MISSING = object()


def open_pool(
    pool: Union[int, str] = "guest",
    directory: str = DEFAULT_POOL_DIR,
    *,
    root: Optional[str] = None,
    writable: Optional[bool] = None,
    lock_timeout: float = 20.0,
) -> Pool:
    """The pool ``pool`` (``0..4`` or ``external``, ``guest``, ``auto``, ``auto-external``,
    ``auto-internal``) of ``directory``, inside the image ``root`` if given.

    ``writable=None`` opens read-write where this user may write the file, else read-only;
    ``True`` insists on writing (PoolPermissionError if not allowed), ``False`` never writes.
    Raises ValueError for an unknown pool name.
    """
    number = pool_number(pool)
    pools = PoolDir(directory, root=root, writable=writable, lock_timeout=lock_timeout)
    return Pool(pools, number)


class Pool:
    """One pool file seen as a mapping of keys to values (the first record of a key wins)."""

    def __init__(self, pools: PoolDir, number: int) -> None:
        self._pools = pools
        self.number = number
        self.name = POOL_LABELS[number]
        self._file: PoolFile = pools.pool(number)
        self.path = self._file.path

    # ----------------------------------------------------------------- reading

    def get_bytes(self, key: Text) -> Optional[bytes]:
        """The value's bytes, or None if the key is absent."""
        return self._file.get(as_bytes(key))

    def get(self, key: Text, default: Optional[str] = None) -> Optional[str]:
        """The value as str, or ``default`` if the key is absent."""
        value = self._file.get(as_bytes(key))
        return default if value is None else value.decode("utf-8", "surrogateescape")

    def __getitem__(self, key: Text) -> str:
        value = self.get(key, _MISSING)  # type: ignore[arg-type]
        if value is _MISSING:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, bytes)) and self._file.get(as_bytes(key)) is not None

    def items(self) -> List[Tuple[str, str]]:
        """(key, value) of every key a host can see, in file order, each key once (its first
        record), read in one pass under the lock."""
        seen, out = set(), []
        for record in self._file.valid_records():
            if record.key not in seen:
                seen.add(record.key)
                out.append((record.text_key, record.text_value))
        return out

    def keys(self) -> List[str]:
        return [key for key, _value in self.items()]

    def values(self) -> List[str]:
        return [value for _key, value in self.items()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.items())

    # ----------------------------------------------------------------- writing

    def set(self, key: Text, value: Text, *, unsafe: bool = False) -> bool:
        """Store ``value`` under ``key`` (str, or bytes of UTF-8); True if the key was added.

        Raises InvalidRecord (a ValueError) for an empty key, a NUL, text that is not UTF-8, or
        a size beyond what the host reads back whole (254 key / 1022 value bytes); with
        ``unsafe=True`` the file format's limits (511 / 2047) apply instead.
        """
        k, v = as_bytes(key), as_bytes(value)
        validate(k, v, unsafe=unsafe)
        return self._file.set(k, v)

    def __setitem__(self, key: Text, value: Text) -> None:
        self.set(key, value)

    def delete(self, key: Text) -> bool:
        """Remove the key's first record; False if it was absent."""
        return self._file.delete(as_bytes(key))

    def __delitem__(self, key: Text) -> None:
        if not self.delete(key):
            raise KeyError(key)

    @property
    def writable(self) -> bool:
        """Whether this pool was opened for writing (decided at the first access)."""
        return self._file.writable

    # ----------------------------------------------------------------- life

    def close(self) -> None:
        self._pools.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Pool {self.number} ({self.name}) at {self.path!r}>"
