"""The worker's Schema Registry client gives up on a lost response and retries."""

from __future__ import annotations

import socket
import threading
import time

from app.runtime import registry_client
from app.settings import Settings


def silent_then_answering_server() -> tuple[int, list[bytes]]:
    """Swallows the first request without a word (the connection stays open), then
    answers every later connection with a subject list."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    requests: list[bytes] = []

    def serve() -> None:
        kept = []
        while True:
            conn, _ = srv.accept()
            requests.append(conn.recv(65536))
            if len(requests) == 1:
                kept.append(conn)  # never answered, never closed
                continue
            body = b'["orders-value"]'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], requests


def test_a_lost_registry_response_times_out_and_is_retried() -> None:
    port, requests = silent_then_answering_server()
    settings = Settings(
        schema_registry_url=f"http://127.0.0.1:{port}", schema_registry_timeout_s=0.3
    )
    client = registry_client(settings)
    result: list[object] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: result.append(client.get_subjects()), daemon=True)
    worker.start()
    worker.join(timeout=15)
    assert result == [["orders-value"]], "the client hung on the unanswered request"
    assert len(requests) == 2 and time.monotonic() - started >= 0.3
