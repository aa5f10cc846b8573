"""``pykvpd simulate`` / ``python -m pykvpd.simulator``: demo, scenarios and serve mode.

Exit status: 0 everything worked; 1 a check or a step failed (an unknown command, a command
that could not run, a host failure no ``expect status`` follows) or the daemon did not come up;
2 usage error or unreadable scenario.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, List, Optional

from pykvpd.simulator.demo import KERNEL_EVENTS, run_demo
from pykvpd.simulator.kernel import DEFAULT_TIMEOUT, Event
from pykvpd.simulator.runner import DaemonFailed, SimulatedGuest
from pykvpd.simulator.scenario import Session, load_scenario
from pykvpd.simulator.serve import serve
from pykvpd.simulator.transcript import Transcript
from pykvpd.simulator.words import CommandError, Quit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pykvpd simulate",
        description=(
            "Simulate a Hyper-V host and the KVP kernel driver. Without options: a demo that "
            "runs the daemon in a temporary directory and shows what host and guest each see."
        ),
        epilog="Scenario format and commands: docs/simulator.md.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--scenario", metavar="FILE", help="play a scripted session ('-' = stdin)")
    mode.add_argument(
        "--serve", metavar="SOCKET", help="keep a simulated device at SOCKET for your own daemon"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="kernel reply timeout (default %(default)g s, as HV_UTIL_TIMEOUT)",
    )
    parser.add_argument(
        "--daemon-cmd",
        metavar="CMD",
        help="scenario: run this daemon instead of ours ({device} and {pool_dir} are filled in)",
    )
    parser.add_argument(
        "--pool-dir", metavar="DIR", help="serve: the daemon's pool directory (guest commands)"
    )
    parser.add_argument(
        "--control", metavar="PATH", help="serve: unix socket taking JSON commands, one per line"
    )
    parser.add_argument(
        "--no-console", action="store_true", help="serve: do not read commands from stdin"
    )
    parser.add_argument(
        "--keep", action="store_true", help="demo/scenario: keep the temporary directory"
    )
    return parser


def main(argv: Optional[List[str]] = None, out: Optional[IO[str]] = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.timeout <= 0:
        print("pykvpd simulate: --timeout must be positive", file=sys.stderr)
        return 2
    if args.serve:
        try:
            return serve(
                args.serve,
                out,
                pool_dir=args.pool_dir,
                control=args.control,
                timeout=args.timeout,
                as_json=args.json,
                console=not args.no_console,
            )
        except (CommandError, OSError) as exc:
            print(f"pykvpd simulate: {exc}", file=sys.stderr)
            return 2
    if args.scenario:
        return run_scenario_file(args.scenario, out, args)
    return run_demo(out, as_json=args.json, keep=args.keep)


def run_scenario_file(path: str, out: IO[str], args: argparse.Namespace) -> int:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        steps, options = load_scenario(text)
    except (OSError, ValueError) as exc:
        print(f"pykvpd simulate: cannot read scenario {path}: {exc}", file=sys.stderr)
        return 2
    return run_scenario(
        steps,
        out,
        as_json=args.json,
        timeout=float(options.get("timeout", args.timeout)),
        daemon_cmd=args.daemon_cmd,
        guest_parameters=options.get("guest_parameters"),
        keep=args.keep,
    )


def run_scenario(
    steps: List,
    out: IO[str],
    as_json: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    daemon_cmd: Optional[str] = None,
    guest_parameters: Optional[dict] = None,
    keep: bool = False,
) -> int:
    """Play (line number, words) steps against a fresh simulated guest."""
    transcript = Transcript(out, as_json)

    def on_event(event: Event) -> None:
        if event.kind in KERNEL_EVENTS:
            transcript.kernel(event.detail)

    guest = SimulatedGuest(
        daemon_cmd=daemon_cmd,
        timeout=timeout,
        on_event=on_event,
        guest_parameters=guest_parameters,
    )
    results: List[dict] = []
    failed: List[dict] = []  # steps that fail the run besides failed checks
    try:
        try:
            guest.start()
        except DaemonFailed as exc:
            transcript.say("info", f"the daemon did not come up: {exc}")
            transcript.finish({"ok": False, "error": str(exc), "steps": []})
            return 1
        session = Session(guest.host, transcript, guest=guest)
        unchecked: Optional[dict] = None  # a failed host command not yet followed by a check
        for number, words in steps:
            transcript.say("info", f"[{number}] {' '.join(words)}")
            checks_before = session.failed_checks
            try:
                result = session.execute(words)
            except Quit:
                break
            step = {"line": number, "command": words, **result}
            results.append(step)
            if unchecked is not None and [w.lower() for w in words[:2]] != ["expect", "status"]:
                failed.append(unchecked)
            unchecked = None
            if result["ok"] or session.failed_checks > checks_before:
                continue  # a failed check is counted as one already
            if "status" in result:
                unchecked = step  # the host got a failure status: 'expect status' may want it
            else:
                failed.append(step)  # unknown command, bad arguments, a guest tool that failed
        if unchecked is not None:
            failed.append(unchecked)
    finally:
        guest.close(keep=keep)
    ok = session.failed_checks == 0 and not failed
    problems = []
    if session.failed_checks:
        problems.append(f"{session.failed_checks} check(s) failed")
    if failed:
        lines = ", ".join(str(s["line"]) for s in failed)
        problems.append(f"{len(failed)} step(s) failed (line {lines})")
    summary = "; ".join(problems) if problems else "all checks passed"
    transcript.section(f"Done: {len(results)} steps, {summary}")
    transcript.finish(
        {
            "ok": ok,
            "failed_checks": session.failed_checks,
            "failed_steps": [s["line"] for s in failed],
            "steps": results,
        }
    )
    return 0 if ok else 1
