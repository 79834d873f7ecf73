"""The local stack (Kafka, Apicurio Registry, provider simulator, SMTP sink) as plain
processes, without Docker: one module per service, the commands in ``cli``.

    config     Settings (stack dir, ports from SPILLWAY_STACK_*), pinned versions, limits
    common     host helpers: log tails, ports, the stack lock, Java discovery, /proc, Maven
    service    Service: a detached process with pid file, log, ports and readiness probe
    kafka      Kafka (KRaft, jars from Maven Central)
    registry   Apicurio Registry (ccompat API, global BACKWARD compatibility)
    simulator  the provider simulator (simulator.provider)
    smtp_sink  the SMTP sink (simulator.smtp_sink)
    cli        fetch, up, down, status, logs; ``python3 -m harness.stack`` / scripts/stack

Other harness code (tests/plugins/scram.py, the registry outage test) uses the names
re-exported here to start a broker or registry of its own the same way.
"""

from harness.stack.common import find_java
from harness.stack.config import (
    APICURIO_MIN_JAVA,
    HOST,
    KAFKA_MIN_JAVA,
    LOG4J_CONFIG,
    REPO,
    Settings,
    StackError,
)

__all__ = [
    "APICURIO_MIN_JAVA",
    "HOST",
    "KAFKA_MIN_JAVA",
    "LOG4J_CONFIG",
    "REPO",
    "Settings",
    "StackError",
    "find_java",
]
