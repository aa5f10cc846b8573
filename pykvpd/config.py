"""The optional configuration file /etc/pykvpd.conf (INI, section [pykvpd]).

A missing file means defaults: the daemon must run on a guest where nobody wrote one.
A present but wrong file is an error naming the file, the key and the value, because a
silently ignored typo (say, in ``ip_injection``) is worse than a refusal to start.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
from typing import Callable, Dict, Optional, Tuple

from .escaping import escape

DEFAULT_PATH = "/etc/pykvpd.conf"
SECTION = "pykvpd"
IP_INJECTION_MODES = ("off", "dry-run", "on")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, key and value."""

    def __init__(self, path: str, key: Optional[str], value: Optional[str], reason: str) -> None:
        self.path = path
        self.key = key
        self.value = value
        self.reason = reason
        if key is None:
            message = f"{path}: {reason}"
        else:
            # key as read from the file: shown escaped (a log line must not carry an ESC or LF)
            message = f"{path}: invalid value {value!r} for {escape(key)}: {reason}"
        super().__init__(message)


class Config:
    """Daemon settings; command-line options override them.

    A plain class rather than a dataclass: importing dataclasses (and inspect with it) costs
    the daemon more than a megabyte of RSS.
    """

    pool_dir: str = "/var/lib/hyperv"
    ip_injection: str = "on"
    # fnmatch patterns of interfaces left out of the Auto pool's address lists. Empty by
    # default so the host sees what the C daemon reports; "docker* veth* virbr*" is typical.
    exclude_interfaces: Tuple[str, ...] = ()
    pool_file_mode: int = 0o644
    debug: bool = False
    debug_values: bool = False
    wait_device: float = 10.0
    source: Optional[str] = None  # the file read, None for defaults; not part of equality

    _FIELDS = (
        "pool_dir",
        "ip_injection",
        "exclude_interfaces",
        "pool_file_mode",
        "debug",
        "debug_values",
        "wait_device",
    )

    def __init__(self, source: Optional[str] = None, **values: object) -> None:
        unknown = set(values) - set(self._FIELDS)
        if unknown:
            raise TypeError(f"unknown Config fields: {', '.join(sorted(unknown))}")
        for name in self._FIELDS:
            setattr(self, name, values.get(name, getattr(type(self), name)))
        self.source = source

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._FIELDS)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._FIELDS)
        return f"Config({inner}, source={self.source!r})"

    def excludes_interface(self, name: str) -> bool:
        """Whether interface ``name`` matches one of the exclusion patterns."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude_interfaces)


def _parse_pool_dir(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError("must be an absolute path")
    return os.path.normpath(raw)


def _parse_ip_injection(raw: str) -> str:
    mode = raw.lower()
    if mode not in IP_INJECTION_MODES:
        raise ValueError("must be one of " + ", ".join(IP_INJECTION_MODES))
    return mode


def _parse_patterns(raw: str) -> Tuple[str, ...]:
    return tuple(p for p in re.split(r"[\s,]+", raw) if p)


def _parse_mode(raw: str) -> int:
    text = raw.lower()
    if text.startswith("0o"):
        text = text[2:]
    if not text or any(c not in "01234567" for c in text):
        raise ValueError("must be an octal file mode such as 0644")
    mode = int(text, 8)
    if mode > 0o777:
        raise ValueError("only permission bits (at most 0777) are allowed")
    return mode


def _parse_bool(raw: str) -> bool:
    states = configparser.ConfigParser.BOOLEAN_STATES
    if raw.lower() not in states:
        raise ValueError("must be a boolean (yes/no, true/false, on/off, 1/0)")
    return states[raw.lower()]


def _parse_seconds(raw: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0 <= seconds <= 3600 or seconds != seconds:
        raise ValueError("must be between 0 and 3600 seconds")
    return seconds


_PARSERS: Dict[str, Callable[[str], object]] = {
    "pool_dir": _parse_pool_dir,
    "ip_injection": _parse_ip_injection,
    "exclude_interfaces": _parse_patterns,
    "pool_file_mode": _parse_mode,
    "debug": _parse_bool,
    "debug_values": _parse_bool,
    "wait_device": _parse_seconds,
}


def _read_parser(path: str) -> Optional[configparser.ConfigParser]:
    """The parsed file, or None when it does not exist."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, None, f"cannot read: {exc}") from exc
    except configparser.Error as exc:
        raise ConfigError(path, None, None, f"syntax error: {exc}") from exc
    return parser


def load_config(path: str = DEFAULT_PATH) -> Config:
    """Read ``path``; defaults when it is missing; ConfigError when it is unusable."""
    parser = _read_parser(path)
    if parser is None:
        return Config()
    values: Dict[str, object] = {}
    if parser.has_section(SECTION):
        for key, raw in parser.items(SECTION):
            parse = _PARSERS.get(key)
            if parse is None:
                known = ", ".join(sorted(_PARSERS))
                raise ConfigError(path, key, raw, f"unknown key in [{SECTION}] (known: {known})")
            try:
                values[key] = parse(raw.strip())
            except ValueError as exc:
                raise ConfigError(path, key, raw, str(exc)) from None
    return Config(source=path, **values)  # type: ignore[arg-type]
