"""Spillway's local stack, without Docker.

Starts, as plain detached processes, a single-node KRaft Kafka broker (jars resolved from
Maven Central), Apicurio Registry (Confluent-compatible API, in-memory storage, global
BACKWARD compatibility), the email provider simulator and the SMTP sink.

    scripts/stack fetch                      resolve the Maven artifacts into .stack/
    scripts/stack up [--only kafka,registry] start what is not running, wait until ready
    scripts/stack status [--only ...]        pid and readiness per service (exit 1 if not all)
    scripts/stack down [--only ...] [--wipe] stop what `up` started (--wipe: drop Kafka data)
    scripts/stack logs SERVICE [-n N] [-f]   the end of a service's log(s); -f: keep following

`scripts/stack` is a thin wrapper of `python3 -m harness.stack` (this module). Everything
lives under .stack/ in the repo (or $SPILLWAY_STACK_DIR); the ports are
$SPILLWAY_STACK_*_PORT (harness/stack/config.py). See stack/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.stack.common import (
    find_processes,
    port_open,
    read_tail,
    rel,
    say,
    stack_lock,
    tail,
)
from harness.stack.config import DEFAULT_TIMEOUT_S, KILL_GRACE_S, STOP_GRACE_S, Settings, StackError
from harness.stack.kafka import Kafka, fetch_kafka, is_kafka
from harness.stack.registry import Registry, apicurio_jar, fetch_apicurio
from harness.stack.service import Service
from harness.stack.simulator import Simulator
from harness.stack.smtp_sink import SmtpSink

SERVICES: list[type[Service]] = [Kafka, Registry, Simulator, SmtpSink]
ALIASES = {"sim": "simulator", "smtp": "smtp-sink", "sink": "smtp-sink", "smtp_sink": "smtp-sink"}


def select(s: Settings, only: str | None) -> list[Service]:
    services = [cls(s) for cls in SERVICES]
    if not only:
        return services
    wanted = {ALIASES.get(w.strip(), w.strip()) for w in only.split(",") if w.strip()}
    unknown = wanted - {svc.name for svc in services}
    if unknown:
        names = ", ".join(svc.name for svc in services)
        raise StackError(f"unknown service(s) {', '.join(sorted(unknown))}; known: {names}")
    return [svc for svc in services if svc.name in wanted]


def cmd_fetch(s: Settings, _args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    with stack_lock(s):
        did_kafka = fetch_kafka(s)
        did_apicurio = fetch_apicurio(s)
    say(f"kafka jars: {'fetched' if did_kafka else 'present'} ({rel(s.kafka_lib)})")
    say(f"apicurio:   {'fetched' if did_apicurio else 'present'} ({rel(apicurio_jar(s))})")
    say(f"fetch done in {time.monotonic() - t0:.1f}s")
    return 0


@dataclass
class Outcome:
    ok: bool
    line: str


def _wait_ready(
    svc: Service, proc: subprocess.Popen[bytes] | None, pid: int, t0: float, deadline: float
) -> Outcome:
    verb = "started" if proc is not None else "was starting"
    why: str | None = "not probed"
    while True:
        if proc is not None and proc.poll() is not None:
            svc.pid_file.unlink(missing_ok=True)
            return Outcome(
                False,
                f"{svc.name}: FAILED, exited with code {proc.returncode} before ready; "
                f"end of {rel(svc.log_file)}:\n{tail(svc.log_file)}",
            )
        if proc is None and not svc.is_ours(pid):
            return Outcome(False, f"{svc.name}: FAILED, pid {pid} went away before ready")
        remaining = deadline - time.monotonic()
        why = svc.probe(timeout=max(0.5, min(3.0, remaining)))
        if why is None:
            break
        if time.monotonic() >= deadline:
            return Outcome(
                False,
                f"{svc.name}: FAILED, not ready after {time.monotonic() - t0:.1f}s ({why}); "
                f"pid {pid} left running; end of {rel(svc.log_file)}:\n{tail(svc.log_file)}",
            )
        time.sleep(0.25)
    try:
        detail = svc.after_ready()
    except (StackError, httpx.HTTPError) as exc:
        return Outcome(False, f"{svc.name}: FAILED after ready: {exc}")
    took = time.monotonic() - t0
    return Outcome(True, f"{svc.name}: {verb} (pid {pid}), ready after {took:.1f}s: {detail}")


def cmd_up(s: Settings, args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    services = select(s, args.only)
    outcomes: dict[str, Outcome] = {}
    waits: list[tuple[Service, subprocess.Popen[bytes] | None, int]] = []
    with stack_lock(s):
        for svc in services:
            pid = svc.owned_pid()
            if pid is not None:
                if svc.probe(timeout=3.0) is None:
                    try:
                        detail = svc.after_ready()
                    except (StackError, httpx.HTTPError) as exc:
                        outcomes[svc.name] = Outcome(False, f"{svc.name}: FAILED: {exc}")
                        continue
                    outcomes[svc.name] = Outcome(
                        True, f"{svc.name}: already running (pid {pid}): {detail}"
                    )
                else:
                    waits.append((svc, None, pid))  # a previous `up` is still bringing it up
                continue
            svc.pid_file.unlink(missing_ok=True)
            busy = [p for p in svc.ports if port_open(p)]
            if busy:
                if svc.probe(timeout=3.0) is None:
                    outcomes[svc.name] = Outcome(
                        True,
                        f"{svc.name}: already running, NOT managed by scripts/stack "
                        f"(port {busy[0]} answered; no pid file): {svc.where()}",
                    )
                else:
                    outcomes[svc.name] = Outcome(
                        False,
                        f"{svc.name}: FAILED, port(s) {busy} already in use by something else",
                    )
                continue
            try:
                svc.prepare()
                proc = svc.start()
            except (StackError, OSError) as exc:
                outcomes[svc.name] = Outcome(False, f"{svc.name}: FAILED to start: {exc}")
                continue
            waits.append((svc, proc, proc.pid))

        for name in [svc.name for svc in services if svc.name in outcomes]:
            say(outcomes[name].line)

        def run(item: tuple[Service, subprocess.Popen[bytes] | None, int]) -> None:
            svc, proc, pid = item
            try:
                out = _wait_ready(svc, proc, pid, t0, deadline)
            except Exception as exc:  # report, don't lose the other services' results
                out = Outcome(False, f"{svc.name}: FAILED: {exc.__class__.__name__}: {exc}")
            outcomes[svc.name] = out
            say(out.line)

        threads = [threading.Thread(target=run, args=(item,), daemon=True) for item in waits]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    ok = all(outcomes[svc.name].ok for svc in services)
    total = time.monotonic() - t0
    state = "ready" if ok else "NOT ready"
    say(f"stack {state} ({', '.join(svc.name for svc in services)}) in {total:.1f}s")
    return 0 if ok else 1


def cmd_down(s: Settings, args: argparse.Namespace) -> int:
    services = select(s, args.only)
    ok = True
    with stack_lock(s):
        signalled: list[tuple[Service, int]] = []
        for svc in services:
            pid = svc.read_pid()
            if pid is None:
                svc.pid_file.unlink(missing_ok=True)  # absent or unreadable
                say(f"{svc.name}: not running (no pid file)")
                continue
            if not svc.is_ours(pid):
                svc.pid_file.unlink(missing_ok=True)
                say(f"{svc.name}: not running (stale pid file {pid} removed)")
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                svc.pid_file.unlink(missing_ok=True)
                say(f"{svc.name}: already gone")
                continue
            signalled.append((svc, pid))

        t0 = time.monotonic()
        for svc, pid in signalled:
            while svc.is_ours(pid) and time.monotonic() - t0 < STOP_GRACE_S:
                time.sleep(0.1)
            how = "stopped"
            if svc.is_ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                t1 = time.monotonic()
                while svc.is_ours(pid) and time.monotonic() - t1 < KILL_GRACE_S:
                    time.sleep(0.1)
                how = f"killed (still running {STOP_GRACE_S:.0f}s after SIGTERM)"
            if svc.is_ours(pid):
                say(f"{svc.name}: FAILED to stop pid {pid}")
                ok = False
                continue
            svc.pid_file.unlink(missing_ok=True)
            say(f"{svc.name}: {how} (pid {pid}, {time.monotonic() - t0:.1f}s)")

        if args.wipe:
            if not any(svc.name == "kafka" for svc in services):
                say("--wipe ignored: kafka is not among the selected services")
            elif find_processes(is_kafka(s)):
                say(f"kafka: NOT wiping {rel(s.kafka_dir)}: a broker still uses it")
                ok = False
            else:
                shutil.rmtree(s.kafka_dir, ignore_errors=True)
                say(f"kafka: wiped {rel(s.kafka_dir)} (next up starts an empty cluster)")
    return 0 if ok else 1


def cmd_status(s: Settings, args: argparse.Namespace) -> int:
    services = select(s, args.only)
    all_ready = True
    for svc in services:
        pid = svc.owned_pid()
        why = svc.probe(timeout=3.0)
        if pid is None and why is not None:
            state, detail = "not running", ""
        elif why is None:
            state = "ready" if pid is not None else "ready (NOT managed: no pid file)"
            detail = svc.where()
            if isinstance(svc, Registry):
                detail += f" (global compatibility {svc.compatibility()})"
        else:
            state, detail = "running, NOT ready", why
        all_ready &= why is None
        pid_s = str(pid) if pid is not None else "-"
        say(f"{svc.name:<10} pid {pid_s:<8} {state:<18} {detail}".rstrip())
    return 0 if all_ready else 1


def cmd_logs(s: Settings, args: argparse.Namespace) -> int:
    services = select(s, args.service)
    if len(services) != 1 or "," in args.service:
        raise StackError(f"logs takes one service, not {args.service!r}")
    return show_logs(services[0].log_files, args.lines, follow=args.follow)


def show_logs(
    paths: Sequence[Path],
    lines: int,
    *,
    follow: bool = False,
    stop: Callable[[], bool] = lambda: False,
    poll_s: float = 0.25,
) -> int:
    """Prints the last ``lines`` of each file (a ``==> path <==`` header when there are
    several); ``follow`` then prints what is appended until ``stop()`` or Ctrl-C.
    Exit 1 if none of the files exists."""
    found = [p for p in paths if p.is_file()]
    for path in paths:
        if path not in found:
            say(f"(no {rel(path)} yet)", sys.stderr)
    if not found:
        return 1
    offsets: dict[Path, int] = {}
    for path in found:
        if len(found) > 1:
            say(f"==> {rel(path)} <==")
        shown, offsets[path] = read_tail(path, lines, whole_lines=follow)
        for line in shown:
            say(line)
    last = found[-1]
    while follow and not stop():
        time.sleep(poll_s)
        for path in found:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < offsets[path]:
                offsets[path] = 0  # rotated or truncated: read the new file from its start
            if size == offsets[path]:
                continue
            with path.open("rb") as fh:
                fh.seek(offsets[path])
                data = fh.read(size - offsets[path])
            # only whole lines; a partial last line waits for its newline
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                continue
            offsets[path] += cut
            if len(found) > 1 and path != last:
                say(f"==> {rel(path)} <==")
                last = path
            for line in data[:cut].decode("utf-8", "replace").splitlines():
                say(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/stack", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="resolve Kafka jars and Apicurio into the stack dir")
    only_help = "comma-separated subset of: kafka, registry, simulator, smtp-sink"
    p_up = sub.add_parser("up", help="start what is not running and wait until ready")
    p_up.add_argument("--only", help=only_help)
    p_up.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for readiness (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    p_down = sub.add_parser("down", help="stop what `up` started")
    p_down.add_argument("--only", help=only_help)
    p_down.add_argument("--wipe", action="store_true", help="also delete Kafka data")
    p_status = sub.add_parser("status", help="pid and readiness; exit 1 unless all ready")
    p_status.add_argument("--only", help=only_help)
    p_logs = sub.add_parser("logs", help="the end of a service's log(s)")
    p_logs.add_argument("service", help="kafka, registry, simulator or smtp-sink")
    p_logs.add_argument("-n", "--lines", type=int, default=50, help="lines (default 50)")
    p_logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    args = parser.parse_args(argv)

    handlers = {
        "fetch": cmd_fetch,
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "logs": cmd_logs,
    }
    try:
        settings = Settings.from_env()
        return handlers[args.command](settings, args)
    except StackError as exc:
        say(f"scripts/stack {args.command}: {exc}", sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
