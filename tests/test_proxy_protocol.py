"""``--proxy-protocol`` on a real daemon process: the client a header names in the log
and ``ctl connections``, on TCP and Unix listeners; ``--proxy-from``; bad headers
harm no other connection; usage errors. (The connection's handling of every header:
tests/test_connection_proxy.py; through real nginx and HAProxy: their own tests.)"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import trio

from triodaemon import TcpAddress, UnixAddress, connect
from triodaemon._proxyproto import V2_SIGNATURE, encode_v1, encode_v2

from .conftest import SpawnFn, run_triodaemon

TEST_TIMEOUT = 30


async def connections(control: Path) -> list[dict[str, object]]:
    result = await run_triodaemon("ctl", "--control", str(control), "connections", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert isinstance(records, list)
    return records


async def test_the_client_a_header_names_is_logged_and_listed(
    spawn: SpawnFn, tmp_path: Path
) -> None:
    control, sock = tmp_path / "ctl.sock", tmp_path / "echo.sock"
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--sock", str(sock), "--control", str(control),
            "--proxy-protocol", "--log-level", "debug",
        )  # fmt: skip
        tcp, unix = await daemon.wait_ready(2)
        assert isinstance(tcp, TcpAddress)
        assert isinstance(unix, UnixAddress)
        async with await connect(tcp) as v1, await connect(unix) as v2:
            balancer_port = v1.socket.getsockname()[1]
            await v1.send_all(encode_v1(("203.0.113.7", 51000), ("10.0.0.1", 7000)) + b"a\n")
            await v2.send_all(encode_v2(("2001:db8::7", 443)) + b"b\n")
            assert await v1.receive_some() == b"a\n"
            assert await v2.receive_some() == b"b\n"
            listed = await connections(control)
            assert [(c["peer"], c["proxy"]) for c in listed] == [
                ("203.0.113.7:51000", f"127.0.0.1:{balancer_port}"),
                ("[2001:db8::7]:443", listed[1]["proxy"]),
            ]
            assert str(listed[1]["proxy"]).startswith("pid ")  # the balancer, on a socket file
            shown = await run_triodaemon("ctl", "--control", str(control), "connections")
            assert f"203.0.113.7:51000 via 127.0.0.1:{balancer_port}" in shown.stdout.decode()
        await daemon.wait_for_line(
            f"conn 1 from 203.0.113.7:51000 via 127.0.0.1:{balancer_port} "
            f"on tcp://127.0.0.1:{tcp.port}: PROXY v1 header"
        )
        daemon.signal()
        assert await daemon.wait() == 0


async def test_bad_headers_end_only_their_connections(spawn: SpawnFn, tmp_path: Path) -> None:
    control = tmp_path / "ctl.sock"
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--control", str(control), "--proxy-protocol",
            "--proxy-timeout", "0.5",
        )  # fmt: skip
        (tcp,) = await daemon.wait_ready(1)
        async with await connect(tcp) as good:
            await good.send_all(encode_v2(("198.51.100.1", 1000)) + b"before\n")
            assert await good.receive_some() == b"before\n"
            for bad in (b"hello\n", b"PROXY " + b"x" * 200, b"\r\n\r\n\x00\r\nQUIX\n", b"PROXY TC"):
                async with await connect(tcp) as stream:
                    await stream.send_all(bad)
                    with contextlib.suppress(trio.BrokenResourceError):  # (a reset)
                        assert await stream.receive_some() == b""
            await good.send_all(b"after\n")
            assert await good.receive_some() == b"after\n"
        result = await run_triodaemon("ctl", "--control", str(control), "stats", "--json")
        errors = json.loads(result.stdout)["errors"]
        assert errors["proxy header"] == 4
        assert errors["internal"] == 0
        line = await daemon.wait_for_line("PROXY header not complete after 0.5s (8 bytes")
        assert line.endswith("; closing")
        daemon.signal()
        assert await daemon.wait() == 0


async def test_proxy_from_refuses_other_sources_before_reading(
    spawn: SpawnFn, tmp_path: Path
) -> None:
    control = tmp_path / "ctl.sock"
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--control", str(control), "--proxy-protocol",
            "--proxy-from", "10.0.0.0/8", "--proxy-from", "192.0.2.1",
        )  # fmt: skip
        (tcp,) = await daemon.wait_ready(1)
        async with await connect(tcp) as stream:
            with contextlib.suppress(trio.BrokenResourceError):  # (a reset)
                await stream.send_all(encode_v1(("203.0.113.7", 1)) + b"x\n")
                assert await stream.receive_some() == b""
        await daemon.wait_for_line("not a trusted balancer (--proxy-from); closing")
        result = await run_triodaemon("ctl", "--control", str(control), "stats", "--json")
        assert json.loads(result.stdout)["errors"]["proxy untrusted"] == 1
        daemon.signal()
        assert await daemon.wait() == 0

    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--proxy-protocol", "--proxy-from", "127.0.0.1"
        )
        (tcp,) = await daemon.wait_ready(1)
        async with await connect(tcp) as stream:
            await stream.send_all(encode_v1(("203.0.113.7", 1)) + b"x\n")
            assert await stream.receive_some() == b"x\n"
        daemon.signal()
        assert await daemon.wait() == 0


async def test_usage_errors_say_what_is_wrong() -> None:
    cases = {
        ("--proxy-timeout", "3"): "--proxy-timeout applies with --proxy-protocol only",
        ("--proxy-from", "10.0.0.1"): "--proxy-from applies with --proxy-protocol only",
        ("--proxy-protocol", "--proxy-from", "10.0.0.300"): "'10.0.0.300' is not an address",
        ("--proxy-protocol", "--proxy-from", "10.0.0.1/33"): "is not an address or network",
        ("--proxy-protocol", "--proxy-timeout", "0"): "must be a finite number of seconds",
    }
    for args, words in cases.items():
        result = await run_triodaemon("--tcp", "127.0.0.1:0", *args)
        assert result.returncode == 2, (args, result)
        stderr = result.stderr.decode()
        assert words in stderr, (args, stderr)
        assert "Traceback" not in stderr


async def test_ctl_connections_escapes_what_a_header_names(spawn: SpawnFn, tmp_path: Path) -> None:
    # A Unix path in a v2 header is the peer's to choose: a newline or an escape code
    # in it must not forge a row of the table, or reach the operator's terminal.
    control = tmp_path / "ctl.sock"
    hostile = b"/tmp/x\nconn 9 from 1.2.3.4:5\x1b[2J\x07"
    header = (
        V2_SIGNATURE
        + b"\x21\x31\x00\xd8"
        + hostile.ljust(108, b"\0")
        + b"/run/lb.sock".ljust(108, b"\0")
    )
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--control", str(control), "--proxy-protocol",
            "--log-level", "debug",
        )  # fmt: skip
        (tcp,) = await daemon.wait_ready(1)
        async with await connect(tcp) as stream:
            await stream.send_all(header + b"x\n")
            assert await stream.receive_some() == b"x\n"
            shown = await run_triodaemon("ctl", "--control", str(control), "connections")
            table = shown.stdout.decode()
            assert "\x1b" not in table
            assert "\x07" not in table
            assert len(table.splitlines()) == 2, table  # the heading, and one row
            assert r"unix:/tmp/x\nconn 9 from 1.2.3.4:5\x1b[2J\x07 via 127.0.0.1:" in table
        line = await daemon.wait_for_line(": PROXY v2 header")
        assert "\x1b" not in line
        daemon.signal()
        assert await daemon.wait() == 0


async def test_a_takeover_that_requires_another_header_is_refused(
    spawn: SpawnFn, tmp_path: Path
) -> None:
    # A new process without --proxy-protocol would believe every client's own
    # "PROXY ..." line; one with another --proxy-from would trust others.
    control = tmp_path / "ctl.sock"
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--control", str(control), "--proxy-protocol",
            "--proxy-from", "127.0.0.1",
        )  # fmt: skip
        (tcp,) = await daemon.wait_ready(1)
        for flags in ([], ["--proxy-protocol"], ["--proxy-protocol", "--proxy-from", "::1"]):
            taker = await spawn("--takeover", str(control), *flags)
            assert await taker.wait() == 1
            [line] = taker.lines
            assert line.startswith("triodaemon: error: cannot take over: ")
            assert "which requires a PROXY header (--proxy-protocol, --proxy-from)" in line
        # (--proxy-timeout may differ: it trusts no one else.)
        taker = await spawn(
            "--takeover", str(control), "--proxy-protocol", "--proxy-from", "127.0.0.1",
            "--proxy-timeout", "2",
        )  # fmt: skip
        await taker.wait_for_line("took over")
        async with await connect(tcp) as stream:
            await stream.send_all(encode_v1(("203.0.113.7", 1)) + b"x\n")
            assert await stream.receive_some() == b"x\n"
        assert await daemon.wait() == 0
        taker.signal()
        assert await taker.wait() == 0
