"""A throwaway single-node KRaft broker with a SASL/SCRAM listener and ACLs on.

Started by tests only, on free ports and in a temporary folder, from the Kafka jars
that ``scripts/stack fetch`` put in .stack/lib/kafka (the same classpath, java and
log4j2 config as scripts/stack; that script and the shared broker are not touched).

Security set-up, the one docs/security.md describes:

- listener ``SASL_PLAINTEXT`` with ``SCRAM-SHA-512``; the users' credentials are
  written into the metadata log at format time (``kafka-storage format --add-scram``),
  so they exist before the first start;
- ``authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer``,
  ``allow.everyone.if.no.acl.found=false``: a user may do only what an ACL allows;
- ``super.users=User:admin`` (and ``User:ANONYMOUS``: the controller listener is
  PLAINTEXT on 127.0.0.1 and the broker talks to its own controller through it; in
  production the controller listener is SSL or SASL too, and ANONYMOUS goes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from app.settings import PROJECT_ROOT
from harness import stack as harness_stack
from harness.workers import free_port

HOST = "127.0.0.1"
MECHANISM = "SCRAM-SHA-512"


class ScramBroker:
    """``with ScramBroker(users={"admin": "...", "producer": "..."}) as b: b.bootstrap``"""

    def __init__(self, users: dict[str, str], admin: str = "admin") -> None:
        assert admin in users
        self.users = users
        self.admin = admin
        self.port = free_port()
        self.controller_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.lib = PROJECT_ROOT / ".stack" / "lib" / "kafka"
        if not any(self.lib.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"no Kafka jars in {self.lib}: run scripts/stack fetch")
        self.java = harness_stack.find_java(harness_stack.KAFKA_MIN_JAVA)
        self.log4j = harness_stack.LOG4J_CONFIG
        self.dir = Path(tempfile.mkdtemp(prefix="spillway-scram-"))

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def client_config(self, user: str, password: str | None = None) -> dict[str, Any]:
        """librdkafka settings for ``user``, built the way the CLI builds them."""
        settings = self.settings(user, password)
        return {**settings.kafka.client_config(), "log_level": 0}

    def settings(self, user: str, password: str | None = None) -> Any:
        from app.settings import Settings

        return Settings(
            kafka_bootstrap=self.bootstrap,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism=MECHANISM,
            kafka_sasl_username=user,
            kafka_sasl_password=password if password is not None else self.users[user],
        )

    def _jvm(self, heap: str) -> list[str]:
        return [
            self.java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # start fast; this broker lives for seconds
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j}",
            f"-Dkafka.logs.dir={self.dir / 'logs'}",
            "-cp",
            f"{self.lib}/*",
        ]

    def _properties(self) -> str:
        admin_pw = self.users[self.admin]
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.admin}" password="{admin_pw}";'
        )
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"SASL_PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://{HOST}:{self.port}",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_plaintext.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{self.admin};User:ANONYMOUS",
            "log.dirs": str(self.dir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def start(self, timeout_s: float = 60.0) -> None:
        props = self.dir / "server.properties"
        props.write_text(self._properties())
        scram = [
            arg
            for user, pw in self.users.items()
            for arg in ("--add-scram", f"{MECHANISM}=[name={user},password={pw}]")
        ]
        cluster_id = uuid.uuid4().bytes  # 16 random bytes, base64url without padding
        import base64

        cid = base64.urlsafe_b64encode(cluster_id).decode().rstrip("=")
        fmt = subprocess.run(
            [*self._jvm("128m"), "kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c",
             str(props), *scram],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed: {fmt.stdout}{fmt.stderr}")
        log = open(self.dir / "kafka.out", "wb")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            [*self._jvm("384m"), "kafka.Kafka", str(props)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        admin = AdminClient(self.client_config(self.admin))
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the SCRAM broker exited: {self.tail()}")
            try:
                admin.list_topics(timeout=2)
                return
            except KafkaException as exc:
                last = exc
                time.sleep(0.3)
        raise RuntimeError(f"SCRAM broker not ready in {timeout_s} s: {last}\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        path = self.dir / "kafka.out"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group only
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ScramBroker:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
