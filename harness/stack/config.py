"""Where the stack lives and on which ports: `Settings` from the environment
(SPILLWAY_STACK_DIR, SPILLWAY_STACK_*_PORT), the versions pinned in stack/pom.xml, limits."""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STACK_SRC = REPO / "stack"
POM = STACK_SRC / "pom.xml"
LOG4J_CONFIG = STACK_SRC / "log4j2.xml"
POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}

HOST = "127.0.0.1"
DEFAULT_TIMEOUT_S = 90.0
STOP_GRACE_S = 20.0
KILL_GRACE_S = 5.0
MVN_ATTEMPTS = 3
KAFKA_MIN_JAVA = 17
APICURIO_MIN_JAVA = 21  # Apicurio Registry 3.3 is compiled for Java 21 (class file 65)


class StackError(Exception):
    """A failure with a message meant for the user (no traceback)."""



def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(f"{name}={raw!r} is out of range")
    return port


@dataclass(frozen=True)
class Settings:
    root: Path
    kafka_port: int
    controller_port: int
    registry_port: int
    registry_mgmt_port: int
    sim_port: int
    smtp_port: int
    smtp_http_port: int
    kafka_version: str
    apicurio_version: str

    @classmethod
    def from_env(cls) -> Settings:
        raw_dir = os.environ.get("SPILLWAY_STACK_DIR", "").strip()
        root = Path(raw_dir) if raw_dir else Path(".stack")
        if not root.is_absolute():
            root = REPO / root
        versions = _pom_versions()
        return cls(
            root=root.resolve(),
            kafka_port=_env_port("SPILLWAY_STACK_KAFKA_PORT", 9092),
            controller_port=_env_port("SPILLWAY_STACK_KAFKA_CONTROLLER_PORT", 9093),
            registry_port=_env_port("SPILLWAY_STACK_REGISTRY_PORT", 8081),
            registry_mgmt_port=_env_port("SPILLWAY_STACK_REGISTRY_MGMT_PORT", 9081),
            sim_port=_env_port("SPILLWAY_STACK_SIM_PORT", 8030),
            smtp_port=_env_port("SPILLWAY_STACK_SMTP_PORT", 2525),
            smtp_http_port=_env_port("SPILLWAY_STACK_SMTP_HTTP_PORT", 8031),
            kafka_version=versions["kafka.version"],
            apicurio_version=versions["apicurio.version"],
        )

    # Layout of the stack dir.
    @property
    def kafka_lib(self) -> Path:
        return self.root / "lib" / "kafka"

    @property
    def dist(self) -> Path:
        return self.root / "dist"

    @property
    def apicurio_dir(self) -> Path:
        return self.root / "apicurio"

    @property
    def kafka_dir(self) -> Path:
        return self.root / "kafka"

    @property
    def kafka_data(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_props(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def cluster_id_file(self) -> Path:
        return self.kafka_dir / "cluster.id"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def apicurio_tarball(self) -> Path:
        return self.dist / f"apicurio-registry-app-{self.apicurio_version}-all.tar.gz"


def _pom_versions() -> dict[str, str]:
    try:
        tree = ET.parse(POM)
    except (OSError, ET.ParseError) as exc:
        raise StackError(f"cannot read {POM}: {exc}") from None
    props = tree.getroot().find("m:properties", POM_NS)
    found: dict[str, str] = {}
    if props is not None:
        for child in props:
            key = child.tag.split("}", 1)[-1]
            found[key] = (child.text or "").strip()
    for key in ("kafka.version", "apicurio.version"):
        if not found.get(key):
            raise StackError(f"{POM} has no <{key}> property")
    return found


def pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()
