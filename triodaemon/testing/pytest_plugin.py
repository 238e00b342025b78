"""pytest fixtures for testing framing, registered through the ``pytest11`` entry point.

Installing triodaemon is enough: the fixtures are there in every test session.
They are trio fixtures, so use them from trio tests (``trio_mode = true``, or
``@pytest.mark.trio``) with pytest-trio installed.

- ``echo_server``: a line-framing echo daemon, in-process, on a Unix socket and
  a loopback TCP port; drained at teardown, failing the test if the drain was
  not clean.
- ``echo_server_factory``: ``await echo_server_factory(Framing("length"), max_connections=8)``
  for chosen framing and limits; every server is drained at teardown.
- ``chunker``: parametrised over :data:`triodaemon.testing.CHUNKERS`, a function
  from bytes to chunkings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
import trio

from .._framing import Framing
from ._chunkings import CHUNKERS, Chunking
from ._server import EchoServer, UncleanDrain
from ._server import echo_server as _run_echo_server

EchoServerFactory = Callable[..., Awaitable[EchoServer]]


@pytest.fixture
async def echo_server_factory() -> AsyncIterator[EchoServerFactory]:
    """Start echo daemons with chosen framing and limits; drain them all at teardown."""
    # pytest-trio runs each fixture in a task of its own, so every server runs in
    # a task of this fixture's nursery, whoever asks for it.
    stop = trio.Event()
    failures: list[str] = []

    async def run(
        framing: Framing | None,
        config: dict[str, Any],
        *,
        task_status: trio.TaskStatus[EchoServer],
    ) -> None:
        try:
            async with _run_echo_server(framing, **config) as server:
                task_status.started(server)
                await stop.wait()
        except UncleanDrain as exc:
            failures.append(str(exc))

    async with trio.open_nursery() as nursery:

        async def start(framing: Framing | None = None, **config: Any) -> EchoServer:
            server: EchoServer = await nursery.start(run, framing, config)
            return server

        try:
            yield start
        finally:
            stop.set()
    if failures:
        pytest.fail("; ".join(failures), pytrace=False)


@pytest.fixture
async def echo_server(echo_server_factory: EchoServerFactory) -> EchoServer:
    """A line-framing echo daemon on a Unix socket and a loopback TCP port."""
    return await echo_server_factory()


@pytest.fixture(params=sorted(CHUNKERS))
def chunker(request: pytest.FixtureRequest) -> Callable[[bytes], Iterable[Chunking]]:
    """Each named chunker in turn: ``for chunks in chunker(data): ...``."""
    return CHUNKERS[request.param]
