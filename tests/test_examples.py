"""The examples run as documented."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from triodaemon import UnixAddress
from triodaemon.testing import echo_frames

from .conftest import SpawnFn

EXAMPLES = Path(__file__).parent.parent / "examples"


async def test_client_example(spawn: SpawnFn, sock_dir: Path) -> None:
    path = str(sock_dir / "echo.sock")
    daemon = await spawn("--sock", path)
    await daemon.wait_ready(1)
    # -W error: a name the example uses that is deprecated fails the run.
    example = [sys.executable, "-W", "error::DeprecationWarning", str(EXAMPLES / "client.py")]
    with trio.fail_after(30):
        result = await trio.run_process([*example, "--sock", path], capture_stdout=True)
    assert result.stdout.decode().splitlines() == [
        "echoed: one",
        "echoed: two",
        "echoed: three",
        "echoed: [b'helper']",
    ]
    daemon.signal()
    assert await daemon.wait() == 0


async def test_embed_example(sock_dir: Path) -> None:
    path = str(sock_dir / "counter.sock")
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(EXAMPLES / "embed.py"), "--sock", path],
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        output = b""
        while b"listening on" not in output:
            chunk = await process.stdout.receive_some()
            assert chunk, "embed.py exited early"
            output += chunk
        replies = await echo_frames(
            UnixAddress(path), [b"incr apples", b"incr apples", b"get apples", b"what"]
        )
        assert replies == [b"1", b"2", b"2", b"error: expected 'incr NAME' or 'get NAME'"]
        process.send_signal(signal.SIGTERM)
        while chunk := await process.stdout.receive_some():
            output += chunk
        assert await process.wait() == 0
    # The client may still be closing when the signal lands: drained, never aborted.
    assert re.search(rb"stopped: [01] drained, 0 aborted", output), output


async def test_readme_library_example(sock_dir: Path) -> None:
    """The README's example, copied as it is into a file and run."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    code = readme.split("## Library\n\n```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("/tmp/shout.sock", str(sock_dir / "shout.sock"))
    (sock_dir / "example.py").write_text(code)
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-W", "error::DeprecationWarning", str(sock_dir / "example.py")],
            capture_stdout=True,
        )
    first, second = result.stdout.decode().splitlines()
    assert first == "[b'HI']"
    assert second.startswith("DrainSummary(drained=")
    assert "Stats(connections_accepted=1, connections_active=0, frames=1," in second
    assert "_frames" not in second.replace("incomplete_frames", "")
    assert not (sock_dir / "shout.sock").exists()
