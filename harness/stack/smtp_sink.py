"""The SMTP sink (simulator.smtp_sink: SMTP plus an HTTP API) as a stack service."""

from __future__ import annotations

import contextlib
import socket
import sys

from harness.stack.config import HOST
from harness.stack.service import PythonService


class SmtpSink(PythonService):
    name = "smtp-sink"
    module = "simulator.smtp_sink"

    @property
    def ports(self) -> list[int]:
        return [self.s.smtp_port, self.s.smtp_http_port]

    def where(self) -> str:
        return f"smtp://{HOST}:{self.s.smtp_port}, http://{HOST}:{self.s.smtp_http_port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "--host",
            HOST,
            "--port",
            str(self.s.smtp_port),
            "--http-port",
            str(self.s.smtp_http_port),
        ]

    def probe(self, timeout: float) -> str | None:
        why = self._health(self.s.smtp_http_port, timeout)
        if why:
            return why
        try:
            with socket.create_connection((HOST, self.s.smtp_port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                banner = sock.makefile("rb").readline(512)
                with contextlib.suppress(OSError):
                    sock.sendall(b"QUIT\r\n")
        except OSError as exc:
            return f"SMTP :{self.s.smtp_port}: {exc}"
        if not banner.startswith(b"220"):
            return f"SMTP :{self.s.smtp_port} banner {banner[:60]!r}"
        return None
