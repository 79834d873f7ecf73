"""Private by default (issue 15 point 4): a worker's web server (health, /metrics,
/status, the intake) listens on 127.0.0.1 unless SPILLWAY_WEB_HOST says otherwise.

Faust's own default is ``web_bind=0.0.0.0``; ``web_host`` only names the server in
URLs. These tests start the real aiohttp server of a worker app and look at the
socket it bound.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from app.factory import create_app
from app.settings import Settings
from harness.workers import free_port


def non_loopback_ipv4() -> str | None:
    """An address of this host other than 127.x, to show nothing listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for UDP connect
            addr: str = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


async def bound_addresses(settings: Settings) -> tuple[list[Any], bool, bool]:
    """Start the app's web server; its addresses, and whether loopback and another
    interface of this host accept a connection on its port."""
    app = create_app(settings)
    web = app.web
    await web.start_server()  # type: ignore[attr-defined]
    try:
        addresses = list(web._runner.addresses)  # type: ignore[attr-defined]
        port = settings.web_port
        loop_ok = await _connects("127.0.0.1", port)
        other = non_loopback_ipv4()
        other_ok = await _connects(other, port) if other else False
        return addresses, loop_ok, other_ok
    finally:
        await web.stop_server()  # type: ignore[attr-defined]


async def _connects(host: str, port: int | None) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def settings(**kw: Any) -> Settings:
    return Settings(
        stage="render", schema_registry_url="mock://listeners", web_port=free_port(), **kw
    )


def test_default_settings_name_loopback() -> None:
    assert Settings().web_host == "127.0.0.1"
    assert Settings.model_fields["web_host"].default == "127.0.0.1"


def test_worker_web_server_binds_loopback_by_default() -> None:
    s = settings()
    addresses, loop_ok, other_ok = asyncio.run(bound_addresses(s))
    assert [a[0] for a in addresses] == ["127.0.0.1"], addresses
    assert [a[1] for a in addresses] == [s.web_port]
    assert loop_ok, "the server did not answer on 127.0.0.1"
    assert not other_ok, "the server answered on a non-loopback interface"


def test_worker_web_server_binds_what_is_configured() -> None:
    if non_loopback_ipv4() is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    s = settings(web_host="0.0.0.0")
    addresses, loop_ok, other_ok = asyncio.run(bound_addresses(s))
    assert [a[0] for a in addresses] == ["0.0.0.0"]
    assert loop_ok and other_ok, "0.0.0.0 must be reachable on every interface"


def test_the_app_conf_binds_the_setting() -> None:
    for host in ("127.0.0.1", "::1", "10.1.2.3"):
        app = create_app(Settings(stage="analyser", schema_registry_url="mock://x", web_host=host))
        assert app.conf.web_bind == host
