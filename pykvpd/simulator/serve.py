"""``pykvpd simulate --serve SOCKET``: a simulated host for a daemon you start yourself.

The fake kernel listens on SOCKET; start the daemon with ``--device SOCKET``. Host commands
come from an interactive console on stdin and, with ``--control PATH``, from a unix stream
socket taking one JSON line per command and answering one JSON line, so scripts and tests can
drive the host while you test your own guest scripts.

Control socket requests: ``"add Key Value"``, ``["add", "Key", "Value"]`` or
``{"cmd": "add", "args": ["Key", "Value"]}``; replies: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "...", "status": "HV_S_CONT"}``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from typing import IO, Any, List, Optional

from pykvpd.simulator.host import Host
from pykvpd.simulator.kernel import DEFAULT_TIMEOUT, Event, FakeKernel
from pykvpd.simulator.scenario import Session
from pykvpd.simulator.transcript import Transcript
from pykvpd.simulator.unixsocket import listen_unix
from pykvpd.simulator.words import CommandError, Quit, split_command

SHOWN_EVENTS = {"open", "register", "close", "timeout", "busy", "conversion-failed"}


def parse_control_request(line: str) -> List[str]:
    """The command words of one control-socket line (JSON string, list or object)."""
    request = json.loads(line)
    if isinstance(request, str):
        return split_command(request)
    if isinstance(request, list):
        return [str(w) for w in request]
    if isinstance(request, dict) and isinstance(request.get("cmd"), str):
        args = request.get("args") or []
        if not isinstance(args, list):
            raise CommandError("'args' must be a list")
        return [request["cmd"], *[str(a) for a in args]]
    raise CommandError('expected a JSON string, list or {"cmd": ..., "args": [...]}')


class Server:
    """The fake kernel, the host view, the console and the control socket of one session."""

    def __init__(
        self,
        device: str,
        out: IO[str],
        pool_dir: Optional[str] = None,
        control: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        as_json: bool = False,
    ) -> None:
        self.transcript = Transcript(out, as_json=as_json)
        self.out = out
        self.as_json = as_json
        # A host command typed while no daemon is registered fails at once (with the reason)
        # instead of blocking the console for the reply timeout; 'wait' waits for a daemon.
        self.kernel = FakeKernel(
            device, timeout=timeout, on_event=self._on_event, register_wait=0.0
        )
        self.session = Session(Host(self.kernel), self.transcript, pool_dir=pool_dir)
        self.control_path = control
        self.stopped = threading.Event()
        self._run_lock = threading.Lock()  # one command at a time, whoever sends it
        self._control: Optional[socket.socket] = None

    def _on_event(self, event: Event) -> None:
        if event.kind in SHOWN_EVENTS:
            self.transcript.kernel(event.detail)

    def run_command(self, words: List[str]) -> dict:
        with self._run_lock:
            try:
                return self.session.execute(words)
            except Quit:
                self.stopped.set()
                return {"ok": True, "result": "bye"}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Server:
        self.kernel.start()
        if self.control_path:
            self._control = listen_unix(self.control_path, socket.SOCK_STREAM, 8, 0.2)
            threading.Thread(target=self._control_loop, name="sim-control", daemon=True).start()
        return self

    def close(self) -> None:
        self.stopped.set()
        if self._control is not None:
            self._control.close()
            self._control = None
            if self.control_path and os.path.exists(self.control_path):
                os.unlink(self.control_path)
        self.kernel.close()

    # ------------------------------------------------------------------ control socket

    def _control_loop(self) -> None:
        listener = self._control
        while listener is not None and not self.stopped.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rw", encoding="utf-8", newline="\n") as stream:
            for line in stream:
                if not line.strip():
                    continue
                try:
                    reply = self.run_command(parse_control_request(line))
                except (ValueError, CommandError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                stream.write(json.dumps(reply, ensure_ascii=False) + "\n")
                stream.flush()
                if self.stopped.is_set():
                    return

    # ------------------------------------------------------------------ console

    def console(self, stdin: IO[str]) -> None:
        """Read commands until EOF or ``quit``; EOF keeps serving if a control socket exists."""
        interactive = stdin.isatty()
        while not self.stopped.is_set():
            if interactive:
                self.out.write("host> ")
                self.out.flush()
            line = stdin.readline()
            if not line:
                break
            try:
                words = split_command(line)
            except ValueError as exc:
                self.transcript.say("info", f"error: {exc}")
                continue
            if not words:
                continue
            reply = self.run_command(words)
            if self.as_json:
                self.out.write(json.dumps(reply, ensure_ascii=False) + "\n")
                self.out.flush()
        if self._control is None:
            self.stopped.set()


def serve(
    device: str,
    out: IO[str],
    stdin: Optional[IO[str]] = None,
    pool_dir: Optional[str] = None,
    control: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    as_json: bool = False,
    console: bool = True,
) -> int:
    """Run until ``quit``, SIGTERM/SIGINT, or end of stdin without a control socket."""
    server = Server(device, out, pool_dir, control, timeout, as_json).start()
    hint = f"--pool-dir {pool_dir}" if pool_dir else "--pool-dir DIR"
    server.transcript.say(
        "info",
        f"simulated KVP device on {device}; start the daemon with:",
        [f"pykvpd -n --device {device} {hint}"]
        + ([f"control socket: {control} (one JSON command per line)"] if control else [])
        + ["type 'help' for the host commands"],
    )
    previous = _install_stop_handlers(server.stopped)
    try:
        if console:
            thread = threading.Thread(
                target=server.console, args=(stdin or sys.stdin,), name="sim-console", daemon=True
            )
            thread.start()
        elif control is None:
            raise CommandError("nothing to serve: no console and no control socket")
        while not server.stopped.wait(0.2):
            pass
    finally:
        _restore_handlers(previous)
        server.close()
    return 0


def _install_stop_handlers(stopped: threading.Event) -> List[Any]:
    if threading.current_thread() is not threading.main_thread():
        return []

    def stop(signum: int, _frame: object) -> None:
        stopped.set()

    return [(sig, signal.signal(sig, stop)) for sig in (signal.SIGTERM, signal.SIGINT)]


def _restore_handlers(previous: List[Any]) -> None:
    for sig, handler in previous:
        signal.signal(sig, handler)
