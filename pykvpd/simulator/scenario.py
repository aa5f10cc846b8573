"""Simulator commands: one grammar for scenario files, the serve console and the control socket.

A command is a line of shell-like words (``host add Env prod``); ``Session.execute`` runs it
against the host view, the guest's pool directory and, in a scenario, the daemon process, writes
what happened to the transcript and returns a JSON-able result. docs/simulator.md has the full
command list; ``HELP`` below is its summary.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from pykvpd import protocol as p
from pykvpd.simulator.guestview import read_pool
from pykvpd.simulator.host import Host, HostError, Item, Value
from pykvpd.simulator.messages import status_name
from pykvpd.simulator.runner import SimulatedGuest, run_guest_tool
from pykvpd.simulator.transcript import Transcript, items_data, items_table, records_lines
from pykvpd.simulator.words import (
    CommandError,
    Quit,
    parse_pairs,
    parse_pool,
    parse_value,
    show_value,
    split_command,
)

HELP = """\
host side (the word "host" in front is optional):
  push [KEY=VALUE ...]          push GuestParameters into pool 3 (overrides remembered)
  add KEY VALUE [KEY VALUE ...] AddKvpItems (pool 0); VALUE u32:N, u64:N, type:T:N for typed
  modify KEY VALUE [...]        ModifyKvpItems
  remove KEY [KEY ...]          RemoveKvpItems
  get POOL KEY                  GET one key
  enumerate POOL                list a guest pool (0..4 or external/guest/auto/...)
  intrinsic                     the guest's intrinsic items (pool 2)
  guest                         the guest-written items (pool 1)
  external                      the host's own record of what it added to pool 0
  ipinfo MAC                    GET_IP_INFO
  setip ADAPTER IPS SUBNETS GATEWAYS DNS [dhcp]   SET_IP_INFO
  stats                         the kernel model's counters
guest side:
  guest set KEY VALUE [--pool N]   write with the kvp pool tool (pool 1 by default)
  guest delete KEY [--pool N]
  guest show POOL                  the pool file as it is on disk
checks (a failed check makes the scenario exit 1):
  expect host POOL KEY VALUE | expect host-missing POOL KEY
  expect guest POOL KEY VALUE | expect guest-missing POOL KEY
  expect status STATUS          status of the last host command (HV_S_OK, HV_S_CONT, ...)
daemon (scenarios only): daemon stop | start | restart | kill
other: wait [SECONDS] (for a registered daemon), sleep SECONDS, help, quit"""

Result = Dict[str, Any]

SHOWN_PARAMETERS = ("HostName", "VirtualMachineName", "VirtualMachineId")


class Session:
    """Runs commands against one simulated VM and records them in a transcript."""

    def __init__(
        self,
        host: Host,
        transcript: Transcript,
        pool_dir: Optional[str] = None,
        guest: Optional[SimulatedGuest] = None,
    ) -> None:
        self.host = host
        self.transcript = transcript
        self.pool_dir = pool_dir if pool_dir is not None else (guest.pool_dir if guest else None)
        self.guest = guest
        self.last_status: Optional[str] = None
        self.failed_checks = 0
        self._commands: Dict[str, Callable[[List[str]], Any]] = {
            "push": self._push,
            "add": self._add,
            "modify": self._modify,
            "remove": self._remove,
            "get": self._get,
            "enumerate": self._enumerate,
            "intrinsic": lambda a: self._list(p.POOL_AUTO, "guest intrinsic items", a),
            "external": self._external,
            "ipinfo": self._ipinfo,
            "setip": self._setip,
            "stats": self._stats,
            "expect": self._expect,
            "daemon": self._daemon,
            "wait": self._wait,
            "sleep": self._sleep,
            "help": self._help,
            "quit": self._quit,
            "exit": self._quit,
        }

    # ------------------------------------------------------------------ dispatch

    def execute(self, line: Union[str, Sequence[str]]) -> Result:
        """Run one command; the result is ``{"ok": ..., "result"|"error": ..., "status": ...}``.

        Raises Quit for ``quit``; every other problem is reported in the result.
        """
        words = split_command(line)
        if not words:
            return {"ok": True, "result": None}
        if words[0] == "host" and len(words) > 1:
            words = words[1:]
        verb, args = words[0].lower(), words[1:]
        try:
            if verb == "guest":
                result = self._guest(args)
            elif verb in self._commands:
                result = self._commands[verb](args)
            else:
                raise CommandError(f"unknown command {verb!r} (try 'help')")
        except Quit:
            raise
        except HostError as exc:
            self.last_status = exc.status_name
            self.transcript.host(f"-> failed: {exc}")
            out: Result = {"ok": False, "status": exc.status_name, "error": str(exc)}
            if exc.partial:
                out["result"] = items_data(exc.partial)
            return out
        except CheckFailed as exc:
            self.failed_checks += 1
            self.transcript.say("check", f"FAILED: {exc}")
            return {"ok": False, "error": f"check failed: {exc}"}
        except (CommandError, ValueError, TypeError, RuntimeError, OSError) as exc:
            self.transcript.say("info", f"error: {exc}")
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "result": result, "status": self.last_status}

    def _ok(self) -> None:
        self.last_status = status_name(p.HV_S_OK)

    # ------------------------------------------------------------------ host commands

    def _push(self, args: List[str]) -> Any:
        overrides: Dict[str, Value] = {}
        for word in args:
            key, sep, value = word.partition("=")
            if not sep:
                raise CommandError(f"push takes KEY=VALUE, not {word!r}")
            overrides[key] = parse_value(value)
        pushed = self.host.push_guest_parameters(overrides)
        self._ok()
        shown = [i for i in pushed if i.name in SHOWN_PARAMETERS or i.name in overrides]
        detail = [f"{i.name} = {i.data}" for i in shown]
        if len(pushed) > len(shown):
            detail.append(
                f"... and {len(pushed) - len(shown)} more HostingSystem*/PhysicalHost* keys"
            )
        self.transcript.host(
            f"pushed {len(pushed)} GuestParameters into pool 3", detail, items_data(pushed)
        )
        return items_data(pushed)

    def _add(self, args: List[str]) -> Any:
        return self._write_items("AddKvpItems", self.host.add_kvp_items, args)

    def _modify(self, args: List[str]) -> Any:
        return self._write_items("ModifyKvpItems", self.host.modify_kvp_items, args)

    def _write_items(
        self, call: str, send: Callable[[Dict[str, Value]], Any], args: List[str]
    ) -> Any:
        """One host call that writes KEY=VALUE items (add and modify differ only in the call)."""
        items = parse_pairs(args)
        shown = ", ".join(f"{k} = {show_value(v)}" for k, v in items.items())
        self.transcript.host(f"{call} {shown}")
        send(items)
        self._ok()
        return None

    def _remove(self, args: List[str]) -> Any:
        if not args:
            raise CommandError("remove KEY [KEY ...]")
        self.transcript.host(f"RemoveKvpItems {', '.join(args)}")
        self.host.remove_kvp_items(args)
        self._ok()
        return None

    def _get(self, args: List[str]) -> Any:
        if len(args) != 2:
            raise CommandError("get POOL KEY")
        item = self.host.get(parse_pool(args[0]), args[1])
        self._ok()
        self.transcript.host(f"GET pool {item.source} {item.name!r}: {item.data!r}")
        return item.as_dict()

    def _enumerate(self, args: List[str]) -> Any:
        if len(args) != 1:
            raise CommandError("enumerate POOL")
        pool = parse_pool(args[0])
        return self._list(pool, f"pool {pool} items", [])

    def _list(self, pool: int, what: str, args: List[str]) -> Any:
        if args:
            raise CommandError("takes no arguments")
        items = self.host.enumerate(pool)
        self.last_status = status_name(p.HV_S_CONT)  # how every successful enumeration ends
        self.transcript.host(
            f"{what} ({_count(len(items), 'item')}):", items_table(items), items_data(items)
        )
        return items_data(items)

    def _external(self, args: List[str]) -> Any:
        items = self.host.external_items()
        self.transcript.host(
            f"host's record of pool 0 ({_count(len(items), 'item')}):",
            items_table(items),
            items_data(items),
        )
        return items_data(items)

    def _ipinfo(self, args: List[str]) -> Any:
        if len(args) != 1:
            raise CommandError("ipinfo MAC")
        info = self.host.get_ip_info(args[0])
        self._ok()
        data = ip_data(info)
        self.transcript.host(
            f"GET_IP_INFO {info.adapter_id or args[0]}:", [f"{k}: {v}" for k, v in data.items()]
        )
        return data

    def _setip(self, args: List[str]) -> Any:
        if len(args) not in (5, 6) or (len(args) == 6 and args[5] != "dhcp"):
            raise CommandError("setip ADAPTER IPS SUBNETS GATEWAYS DNS [dhcp]")
        self.transcript.host(f"SET_IP_INFO {args[0]}: {' '.join(args[1:])}")
        self.host.set_ip_info(*args[:5], dhcp_enabled=len(args) == 6)
        self._ok()
        return None

    def _stats(self, args: List[str]) -> Any:
        stats = self.host.kernel.stats()
        self.transcript.say("kernel", "counters", [f"{k}: {v}" for k, v in stats.items()], stats)
        return stats

    # ------------------------------------------------------------------ guest commands

    def _guest(self, args: List[str]) -> Any:
        if not args:
            return self._list(p.POOL_GUEST, "guest items", [])
        verb, rest = args[0], args[1:]
        if verb == "show":
            if len(rest) != 1:
                raise CommandError("guest show POOL")
            pool = parse_pool(rest[0])
            records = read_pool(self._pool_dir(), pool)
            data = [{"key": k, "value": v} for k, v in records]
            self.transcript.guest(
                f".kvp_pool_{pool} ({_count(len(records), 'record')}):",
                records_lines(records),
                data,
            )
            return data
        if verb in ("set", "delete"):
            wanted = 2 if verb == "set" else 1
            if len(_without_pool_option(rest)) != wanted:
                raise CommandError(f"guest {verb} KEY{' VALUE' if verb == 'set' else ''}")
            shown = run_guest_tool(self._pool_dir(), [verb, *rest])
            self.transcript.guest(f"$ {shown}")
            return None
        raise CommandError(f"unknown guest command {verb!r}")

    def _pool_dir(self) -> str:
        if not self.pool_dir:
            raise CommandError("no guest pool directory (use --pool-dir)")
        return self.pool_dir

    # ------------------------------------------------------------------ checks

    def _expect(self, args: List[str]) -> Any:
        if not args:
            raise CommandError("expect host|host-missing|guest|guest-missing|status ...")
        kind, rest = args[0], args[1:]
        if kind == "status":
            if len(rest) != 1:
                raise CommandError("expect status STATUS")
            if self.last_status != rest[0]:
                raise CheckFailed(f"last status is {self.last_status}, expected {rest[0]}")
            self.transcript.say("check", f"ok: last status {rest[0]}")
            return True
        if kind in ("host", "guest") and len(rest) == 3:
            found = self._lookup(kind, parse_pool(rest[0]), rest[1])
            if rest[2] not in found:
                shown = "absent" if not found else " / ".join(map(repr, found))
                raise CheckFailed(
                    f"{kind} pool {rest[0]} {rest[1]!r}: {shown}, expected {rest[2]!r}"
                )
            self.transcript.say("check", f"ok: {kind} sees {rest[1]} = {rest[2]}")
            return True
        if kind in ("host-missing", "guest-missing") and len(rest) == 2:
            side = kind.split("-")[0]
            found = self._lookup(side, parse_pool(rest[0]), rest[1])
            if found:
                raise CheckFailed(f"{side} pool {rest[0]} still has {rest[1]!r} = {found[0]!r}")
            self.transcript.say("check", f"ok: {side} pool {rest[0]} has no {rest[1]}")
            return True
        raise CommandError(f"bad expect: {' '.join(args)}")

    def _lookup(self, side: str, pool: int, key: str) -> List[str]:
        if side == "host":
            items: List[Item] = self.host.enumerate(pool)
            return [i.data for i in items if i.name == key]
        return [v for k, v in read_pool(self._pool_dir(), pool) if k == key]

    # ------------------------------------------------------------------ daemon and pacing

    def _daemon(self, args: List[str]) -> Any:
        if self.guest is None:
            raise CommandError("no daemon under the simulator's control here")
        if len(args) != 1 or args[0] not in ("stop", "start", "restart", "kill"):
            raise CommandError("daemon stop|start|restart|kill")
        action, code = args[0], None
        if action in ("stop", "kill", "restart"):
            code = self.guest.stop_daemon(signal.SIGKILL if action == "kill" else signal.SIGTERM)
            self.transcript.say("info", f"daemon {action}: exit status {code}")
        if action in ("start", "restart"):
            self.guest.start_daemon()
            self.transcript.say("info", f"daemon started and registered ({action})")
        return code

    def _wait(self, args: List[str]) -> Any:
        timeout = float(args[0]) if args else 30.0
        ok = self.host.kernel.wait_registered(timeout)
        self.transcript.say("info", "daemon registered" if ok else "no daemon registered")
        if not ok:
            raise CommandError(f"no daemon registered within {timeout:g} s")
        return ok

    def _sleep(self, args: List[str]) -> Any:
        if len(args) != 1:
            raise CommandError("sleep SECONDS")
        time.sleep(float(args[0]))
        return None

    def _help(self, args: List[str]) -> Any:
        self.transcript.say("info", "commands:", HELP.splitlines())
        return HELP

    def _quit(self, args: List[str]) -> Any:
        raise Quit()


class CheckFailed(Exception):
    """An ``expect`` that did not hold."""


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _without_pool_option(words: Sequence[str]) -> List[str]:
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == "--pool":
            skip = True
        else:
            out.append(word)
    return out


def ip_data(info: p.IpInfo) -> Dict[str, Any]:
    return {
        "adapter_id": info.adapter_id,
        "addr_family": info.addr_family,
        "dhcp_enabled": info.dhcp_enabled,
        "ip_addr": info.ip_addr,
        "sub_net": info.sub_net,
        "gate_way": info.gate_way,
        "dns_addr": info.dns_addr,
    }


# --------------------------------------------------------------------------- scenario files


def load_scenario(text: str) -> Tuple[List[Tuple[int, List[str]]], Dict[str, Any]]:
    """Steps as (line number, words) and options, from the line format or JSON.

    JSON: a list of commands (strings or word lists), or an object with ``steps`` and optional
    ``guest_parameters`` (a dict pushed with ``push``) and ``timeout`` (kernel reply timeout).
    """
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        document = json.loads(text)
        if isinstance(document, list):
            document = {"steps": document}
        steps = document.get("steps")
        if not isinstance(steps, list):
            raise CommandError("JSON scenario needs a list of steps")
        options = {k: v for k, v in document.items() if k != "steps"}
        return [(n, split_command(s)) for n, s in enumerate(steps, 1)], options
    steps = []
    for number, line in enumerate(text.splitlines(), 1):
        words = split_command(line)
        if words:
            steps.append((number, words))
    return steps, {}
