"""The pytest plugin: fixtures available by installation, the docs/examples test file."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from triodaemon import Framing
from triodaemon.testing import Chunking, EchoServer
from triodaemon.testing.pytest_plugin import EchoServerFactory

ROOT = Path(__file__).parent.parent


async def test_echo_server_fixture(echo_server: EchoServer) -> None:
    assert echo_server.framing == Framing()
    assert await echo_server.echo([b"one"], "unix") == [b"one"]
    assert await echo_server.echo([b"two"], "tcp") == [b"two"]
    stream = await echo_server.open_stream()
    async with stream:
        await stream.send_all(b"raw\n")
        assert await stream.receive_some() == b"raw\n"
    assert echo_server.daemon.stats.connections_accepted == 3


async def test_factory_with_framing_and_limits(echo_server_factory: EchoServerFactory) -> None:
    varint = await echo_server_factory(Framing("varint", max_frame=10), max_connections=2)
    lines = await echo_server_factory()
    assert varint.unix != lines.unix
    assert await varint.echo([b"x" * 10]) == [b"x" * 10]
    assert varint.daemon.config.max_connections == 2
    assert await lines.echo([b"y"], "tcp") == [b"y"]


def test_chunker_fixture(chunker: Callable[[bytes], Iterable[Chunking]]) -> None:
    chunkings = list(chunker(b"abcdef"))
    assert chunkings
    assert all(b"".join(chunks) == b"abcdef" for chunks in chunkings)


def test_examples_test_file_passes(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(ROOT / "examples" / "test_with_triodaemon.py"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7)


def test_testing_docs_example_is_the_examples_file() -> None:
    docs = (ROOT / "docs" / "testing.md").read_text()
    example = (ROOT / "examples" / "test_with_triodaemon.py").read_text()
    block = docs.split("<!-- example-test -->\n```python\n", 1)[1].split("```", 1)[0]
    assert block == example


def test_unclean_drain_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from triodaemon import Framing

        KEEP = []

        @pytest.mark.trio
        async def test_leaves_a_frame_unfinished(echo_server_factory):
            server = await echo_server_factory(Framing("length"), drain_timeout=0.2)
            stream = await server.open_stream()
            await stream.send_all(b"\\x00\\x00\\x00\\x10only part")
            KEEP.append(stream)  # the test ends without finishing the frame or closing it
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)  # pytest-trio reports teardown failures on the test
    result.stdout.fnmatch_lines(["*the echo server's drain was not clean: 1 connection(s)*"])


def test_failing_decoder_is_reported_in_words(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from triodaemon import Framing
        from triodaemon.testing import all_chunkings, assert_decodes

        class OneReadOneMessage:
            def feed(self, data):
                return [data.rstrip(b"\\n")]

        def test_naive():
            frames = [b"ab", b"cd"]
            assert_decodes(OneReadOneMessage, all_chunkings(Framing(), frames), frames,
                           encode=Framing().encode)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*FramingMismatch: whole (1 reads of sizes 6): frame 1 of 2 differs*"]
    )
