"""Host helpers shared by the services: output, log tails, ports, the stack lock, Java
discovery and class-data sharing, /proc bookkeeping, Maven."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from harness.stack.config import HOST, MVN_ATTEMPTS, POM, REPO, Settings, StackError

_print_lock = threading.Lock()


def say(msg: str, stream: TextIO | None = None) -> None:
    with _print_lock:
        print(msg, file=stream or sys.stdout, flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def read_tail(path: Path, count: int, *, whole_lines: bool = False) -> tuple[list[str], int]:
    """The last ``count`` lines of a file (read backwards in blocks; OSError if unreadable)
    and the offset just past them. ``whole_lines``: a last line without its newline yet (a
    writer mid-line) is left out, and the offset stops before it."""
    count = max(count, 0)
    block = 64 * 1024
    with path.open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= count:
            pos = max(0, pos - block)
            fh.seek(pos)
            data = fh.read(end - pos)
    if whole_lines:
        cut = data.rfind(b"\n") + 1
        end -= len(data) - cut
        data = data[:cut]
    lines = data.decode("utf-8", "replace").splitlines()
    return (lines[-count:] if count else []), end


def last_lines(path: Path, count: int) -> list[str]:
    return read_tail(path, count)[0]


def tail(path: Path, lines: int = 25) -> str:
    try:
        found = last_lines(path, lines)
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in found)


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def rotate(path: Path) -> None:
    if path.exists() and path.stat().st_size > 0:
        path.replace(path.with_name(path.name + ".1"))


@contextlib.contextmanager
def stack_lock(settings: Settings) -> Iterator[None]:
    """Serialize fetch/up/down (e.g. parallel CI steps or test sessions)."""
    settings.run.mkdir(parents=True, exist_ok=True)
    with (settings.run / "stack.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another scripts/stack invocation to finish ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@functools.cache
def java_major(java: str) -> int:
    """Major version of a java binary (0 if it does not run)."""
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, check=False, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _java_candidates() -> list[str]:
    found: list[str] = []
    for env in ("SPILLWAY_STACK_JAVA_HOME", "JAVA_HOME"):
        home = os.environ.get(env, "").strip()
        if home:
            found.append(str(Path(home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    # Other installed JDKs (e.g. a Temurin beside Debian's OpenJDK), newest first.
    others = [str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java")]
    found.extend(sorted(others, key=lambda j: (java_major(j), j), reverse=True))
    return [j for j in dict.fromkeys(found) if Path(j).is_file()]


@functools.cache
def find_java(min_major: int) -> str:
    """First java >= min_major from $SPILLWAY_STACK_JAVA_HOME, $JAVA_HOME, PATH, /usr/lib/jvm."""
    candidates = _java_candidates()
    for java in candidates:
        if java_major(java) >= min_major:
            return java
    seen = ", ".join(f"{j} ({java_major(j)})" for j in candidates) or "none"
    raise StackError(
        f"no Java {min_major}+ found (seen: {seen}); set SPILLWAY_STACK_JAVA_HOME to a JDK"
    )


def cds_flags(s: Settings, name: str, java: str, *key_parts: str) -> list[str]:
    """JVM flags for an application class-data-sharing archive under .stack/cache.

    Saves about a second (Kafka) to two (Apicurio) of startup on a 2-core box from the second
    start on. The archive's name hashes the JVM and the jars, so a version bump makes a new one;
    a stale or unusable archive only makes the JVM warn and start without it.
    SPILLWAY_STACK_CDS=0 turns this off.
    """
    if os.environ.get("SPILLWAY_STACK_CDS", "1").strip() in ("0", "false", "no", "off"):
        return []
    key = "|".join([os.path.realpath(java), *key_parts])
    cache = s.root / "cache"
    archive = cache / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsa"
    quiet = "-Xlog:cds=error"  # dumping lists dozens of "Skipping ..." warnings otherwise
    if java_major(java) >= 19:
        return ["-XX:+AutoCreateSharedArchive", f"-XX:SharedArchiveFile={archive}", quiet]
    if archive.is_file():
        return [f"-XX:SharedArchiveFile={archive}", quiet]
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob(f"{name}-*.jsa"):
        old.unlink(missing_ok=True)
    return [f"-XX:ArchiveClassesAtExit={archive}", quiet]  # written when this JVM exits


def proc_cmdline(pid: int) -> list[str] | None:
    """The argv of a live, non-zombie process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2 :].startswith(("Z", "X")):
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode("utf-8", "replace").split("\0")


def find_processes(owns: Callable[[Sequence[str]], bool]) -> list[int]:
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = proc_cmdline(int(entry.name))
            if argv is not None and owns(argv):
                pids.append(int(entry.name))
    return pids


def mvn(args: Sequence[str], what: str) -> None:
    mvn_bin = shutil.which("mvn")
    if not mvn_bin:
        raise StackError("mvn not found (needed to resolve Kafka and Apicurio from Maven Central)")
    # -C: fail on checksum mismatch instead of warning. Retries ride over network blips.
    cmd = [mvn_bin, "-B", "-q", "-C", "-f", str(POM), *args]
    last = ""
    for attempt in range(1, MVN_ATTEMPTS + 1):
        res = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if res.returncode == 0:
            return
        last = (res.stdout + res.stderr).strip()
        if attempt < MVN_ATTEMPTS:
            say(f"  mvn failed resolving {what} (attempt {attempt}), retrying ...", sys.stderr)
            time.sleep(3 * attempt)
    lines = "\n".join(last.splitlines()[-40:])
    raise StackError(f"mvn could not resolve {what}:\n  {' '.join(cmd)}\n{lines}")
