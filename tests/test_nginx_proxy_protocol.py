"""nginx with ``proxy_protocol on;`` in front of triodaemon --proxy-protocol:
examples/nginx/triodaemon-proxy-protocol.conf, run for real (as tests/test_nginx.py
runs the other nginx examples, with its helpers)."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import trio

from triodaemon import connect

from . import test_nginx
from .conftest import SpawnFn, run_triodaemon
from .test_nginx import NGINX, _daemon_args, _receive, nginx

TEST_TIMEOUT = 60
EXAMPLE = "triodaemon-proxy-protocol.conf"

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is missing: .ci/run installs it")

#: A directory for the sockets that nginx's workers can pass through (0711).
socket_dir = test_nginx.socket_dir


async def test_the_daemon_sees_the_clients_own_address(
    spawn: SpawnFn, socket_dir: Path, tmp_path: Path
) -> None:
    control = str(socket_dir / "ctl.sock")
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            *_daemon_args(socket_dir, "echo.sock"), "--proxy-protocol", "--control", control
        )
        await daemon.wait_ready(1)
        async with nginx(tmp_path, EXAMPLE, socket_dir) as proxy:
            stream = await connect(proxy)
            async with stream:
                port = stream.socket.getsockname()[1]
                # Pipelined: the header and the frames may reach the daemon in one read.
                await stream.send_all(b"one\ntwo\n")
                assert await _receive(stream, 8) == b"one\ntwo\n"
                result = await run_triodaemon("ctl", "--control", control, "connections", "--json")
                assert result.returncode == 0, result.stderr.decode()
                connections = json.loads(result.stdout)
                assert [c["peer"] for c in connections] == [f"127.0.0.1:{port}"], connections
                assert connections[0]["proxy"], connections  # nginx's end
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    assert re.search(
        rf"conn \d+ from 127\.0\.0\.1:{port} via .*: PROXY v1 header", daemon.stderr
    ), daemon.stderr
    assert "Traceback" not in daemon.stderr
