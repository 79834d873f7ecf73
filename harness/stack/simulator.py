"""The email provider simulator (simulator.provider) as a stack service."""

from __future__ import annotations

import sys

from harness.stack.config import HOST
from harness.stack.service import PythonService


class Simulator(PythonService):
    name = "simulator"
    module = "simulator.provider"

    @property
    def ports(self) -> list[int]:
        return [self.s.sim_port]

    def where(self) -> str:
        return f"http://{HOST}:{self.s.sim_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--host", HOST, "--port", str(self.s.sim_port)]

    def probe(self, timeout: float) -> str | None:
        return self._health(self.s.sim_port, timeout)
