"""SET_IP_INFO steps: file writes and argv commands, run in order or only described (dry-run).

A backend turns a validated configuration into a ``Plan``; dry-run logs ``Plan.describe()`` and a
real run calls ``execute``, so what is logged is exactly what would be done, and tests can
compare the commands one by one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .inject import IpConfig, write_atomic
from .runner import CommandError, Deadline, run, run_checked

log = logging.getLogger(__name__)


class NoBackend(RuntimeError):
    """Nothing on this system is known to manage the interface, or it cannot apply the request."""


@dataclass(frozen=True)
class Write:
    """Replace directory/filename atomically; mode 0644 where a stack reads it as non-root."""

    directory: str
    filename: str
    text: str
    mode: int = 0o600


@dataclass(frozen=True)
class Command:
    argv: Tuple[str, ...]
    must_succeed: bool = True


@dataclass
class Plan:
    """What applying the configuration means on this system, step by step."""

    backend: str
    steps: List[object] = field(default_factory=list)

    def describe(self) -> List[str]:
        out = []
        for step in self.steps:
            if isinstance(step, Write):
                out.append(f"write {os.path.join(step.directory, step.filename)} "
                           f"(mode {step.mode:04o})")
            elif isinstance(step, Command):
                out.append("run " + " ".join(step.argv))
        return out


@dataclass(frozen=True)
class Target:
    """Everything a backend needs to know about the interface being configured."""

    ifname: str
    ifindex: Optional[int]
    mac: str
    config: IpConfig
    ifcfg_path: str
    keyfile_path: str


def execute(plan: Plan, deadline: Deadline, timeout: float) -> None:
    """Carry the plan out in order; raises CommandError on the first failing required step."""
    for step in plan.steps:
        if isinstance(step, Write):
            write_atomic(step.directory, step.filename, step.text, step.mode)
            continue
        assert isinstance(step, Command)
        if step.must_succeed:
            run_checked(step.argv, deadline.budget(timeout))
            continue
        try:
            result = run(step.argv, deadline.budget(timeout))
        except CommandError as exc:
            log.info("SET_IP_INFO: optional step failed: %s", exc)
            continue
        if result.returncode:
            log.info("SET_IP_INFO: %s exited %d (ignored)", " ".join(step.argv),
                     result.returncode)
