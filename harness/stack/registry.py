"""Apicurio Registry (Confluent-compatible API, in-memory storage, global BACKWARD
compatibility), unpacked from the app archive Maven fetches into <stack>/dist."""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from harness.stack.common import cds_flags, find_java, find_processes, mvn, say
from harness.stack.config import APICURIO_MIN_JAVA, HOST, Settings, StackError
from harness.stack.service import Service


def is_apicurio(s: Settings) -> Callable[[Sequence[str]], bool]:
    prefix = str(s.apicurio_dir) + os.sep
    return lambda argv: "-jar" in argv and any(a.startswith(prefix) for a in argv)


def apicurio_unpacked(s: Settings) -> bool:
    marker = s.apicurio_dir / ".unpacked"
    return marker.is_file() and marker.read_text().strip() == s.apicurio_tarball.name


def fetch_apicurio(s: Settings) -> bool:
    """Apicurio app archive into .stack/dist, unpacked into .stack/apicurio."""
    did = False
    if not s.apicurio_tarball.is_file():
        say(f"fetching Apicurio Registry {s.apicurio_version} (~160 MB) from Maven Central ...")
        tmp = s.dist / ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        artifact = f"io.apicurio:apicurio-registry-app:{s.apicurio_version}:tar.gz:all"
        mvn(
            ["dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={tmp}"],
            f"Apicurio Registry {s.apicurio_version}",
        )
        got = tmp / s.apicurio_tarball.name
        if not got.is_file():
            raise StackError(f"mvn finished but {got.name} is not in {tmp}")
        got.rename(s.apicurio_tarball)
        shutil.rmtree(tmp, ignore_errors=True)
        did = True
    if not apicurio_unpacked(s):
        if find_processes(is_apicurio(s)):
            raise StackError("Apicurio is running from .stack/apicurio: `scripts/stack down` first")
        say(f"unpacking {s.apicurio_tarball.name} ...")
        tmp = s.apicurio_dir.with_name("apicurio.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(s.apicurio_tarball) as tar:
            if hasattr(tarfile, "data_filter"):  # 3.11.4+: refuse absolute paths, links out
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        (tmp / ".unpacked").write_text(s.apicurio_tarball.name + "\n")
        shutil.rmtree(s.apicurio_dir, ignore_errors=True)
        tmp.rename(s.apicurio_dir)
        did = True
    return did


def apicurio_jar(s: Settings) -> Path:
    jars = sorted(s.apicurio_dir.rglob("quarkus-run.jar"), key=lambda p: len(p.parts))
    if not jars:
        raise StackError(f"no quarkus-run.jar under {s.apicurio_dir}; try `scripts/stack fetch`")
    return jars[0]


class Registry(Service):
    name = "registry"

    @property
    def ports(self) -> list[int]:
        return [self.s.registry_port, self.s.registry_mgmt_port]

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.s.registry_port}/apis/ccompat/v7"

    def where(self) -> str:
        return self.base

    def owns(self, argv: Sequence[str]) -> bool:
        return is_apicurio(self.s)(argv)

    def prepare(self) -> None:
        fetch_apicurio(self.s)

    def command(self) -> list[str]:
        java = find_java(APICURIO_MIN_JAVA)
        jar = apicurio_jar(self.s)
        return [
            java,
            "-Xmx512m",
            # C1 only: a dev registry serves a trickle of requests; this halves startup CPU.
            "-XX:TieredStopAtLevel=1",
            *cds_flags(self.s, "registry", java, str(jar), self.s.apicurio_tarball.name),
            f"-Dquarkus.http.host={HOST}",
            f"-Dquarkus.http.port={self.s.registry_port}",
            # Quarkus' management interface otherwise listens on 0.0.0.0:9000.
            f"-Dquarkus.management.host={HOST}",
            f"-Dquarkus.management.port={self.s.registry_mgmt_port}",
            # Default global rule (io.apicurio.registry.rules.RulesConfiguration reads the
            # apicurio.rules.global.* prefix); after_ready() verifies it through ccompat.
            "-Dapicurio.rules.global.compatibility=BACKWARD",
            "-jar",
            str(jar),
        ]

    def probe(self, timeout: float) -> str | None:
        try:
            r = httpx.get(f"{self.base}/subjects", timeout=timeout)
        except httpx.HTTPError as exc:
            return f"GET /subjects: {exc.__class__.__name__}"
        return None if r.status_code == 200 else f"GET /subjects -> {r.status_code}"

    def compatibility(self) -> str | None:
        try:
            r = httpx.get(f"{self.base}/config", timeout=5)
            r.raise_for_status()
            level = r.json().get("compatibilityLevel")
        except (httpx.HTTPError, ValueError):
            return None
        return str(level) if level is not None else None

    def after_ready(self) -> str:
        level = self.compatibility()
        if level != "BACKWARD":
            r = httpx.put(f"{self.base}/config", json={"compatibility": "BACKWARD"}, timeout=5)
            if r.status_code != 200:
                raise StackError(f"PUT {self.base}/config -> {r.status_code}: {r.text[:200]}")
            level = self.compatibility()
            if level != "BACKWARD":
                raise StackError(f"registry global compatibility is {level!r}, not BACKWARD")
            say(f"  registry: global compatibility was {level!r}; set BACKWARD via ccompat API")
        return f"{self.base} (global compatibility {level})"
