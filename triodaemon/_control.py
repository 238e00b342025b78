"""The control protocol: ask a running daemon what it is doing, tell it what to do.

Newline-delimited JSON over a stream (the ``--control`` Unix socket): one request
per line, ``{"id": 1, "command": "log-level", "level": "debug"}``, and one reply
per request, in order, echoing its ``id``: ``{"id": 1, "ok": true, "result": ...}``
or ``{"id": 1, "ok": false, "error": "..."}``. A request that cannot be carried
out (malformed JSON, nested deeper than ``MAX_JSON_DEPTH``, an unknown command,
a wrong argument) gets an error reply and the connection stays usable; so does
one that fails inside the daemon (an internal error: logged with its traceback,
counted). A connection that fails inside is closed; nothing a client sends can
stop the daemon (see :mod:`._faults`).

Strategy: :class:`Commands` is a table of named async functions; it turns one
request line into one reply, and never raises for anything a client sends.
:func:`serve_control_stream` runs the request/reply loop over any trio stream
with every resource bounded: a request line is at most ``MAX_REQUEST`` bytes
(longer: an error reply, then the connection is closed, as nothing after it can
be trusted to start a line), a line begun must end within ``REQUEST_TIMEOUT``, a
connection with no request for ``IDLE_TIMEOUT`` is closed, and a reply the
client does not take within ``SEND_TIMEOUT`` closes it (requests are read only
once the previous reply is sent, so a client that never reads holds one reply
at most). :func:`serve_control` accepts at most ``MAX_CLIENTS`` at a time on a
listener; one more gets an error line and is closed. :class:`ControlClient` is
the other end, for ``triodaemon ctl`` and tests.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ._errors import ClientError, FramingError, TriodaemonError
from ._faults import fault, loads
from ._framing import Framing
from ._listeners import AcceptGate, BoundListener, UnixAddress, connect, stream_for
from ._stats import Stats

log = logging.getLogger("triodaemon")

#: The longest request line, newline included. (Past it the client gets an error
#: line, then the connection is closed; one that goes on sending far past it may
#: find the connection reset before it reads that line.)
MAX_REQUEST = 65536
#: Seconds a request line may take from its first byte to its newline.
REQUEST_TIMEOUT = 10.0
#: Seconds a control connection may stay without a request before it is closed.
IDLE_TIMEOUT = 300.0
#: Seconds a reply may wait for the client to read it before the connection is closed.
SEND_TIMEOUT = 10.0
#: Control connections served at once; one more gets an error line and is closed.
MAX_CLIENTS = 16

#: The levels ``log-level`` accepts.
LOG_LEVELS = ("debug", "info", "warning", "error")


class ControlError(TriodaemonError):
    """A request that cannot be carried out; the message is the reply's ``error``.

    Raised by :meth:`ControlClient.request` for an error reply, too.
    """


class ControlClosed(ClientError):
    """The daemon's end of a control connection closed (it exited, or closed the
    connection for a limit) before the reply came."""


#: A command: the request's arguments (every key but ``id`` and ``command``) to
#: the reply's ``result`` (anything JSON can carry).
Command = Callable[[dict[str, Any]], Awaitable[Any]]


@attrs.frozen
class _Entry:
    run: Command
    usage: str
    summary: str


@attrs.frozen
class Session:
    """A command's result that takes the connection over after the reply (a handover).

    ``result`` is replied as any result is; then ``run(stream)`` has the
    connection (it ends the control conversation). ``refuse(stream)``, asked
    first, may say why this connection cannot have it (an error reply instead).
    If the reply is an error or cannot be sent, ``abandon()`` is called instead.
    """

    result: Any
    run: Callable[[trio.SocketStream], Awaitable[None]]
    abandon: Callable[[], None]
    refuse: Callable[[trio.SocketStream], str | None] = lambda stream: None


class Commands:
    """The commands a control connection can run, by name, with ``help`` built in.

    Args:
        stats: where internal errors of requests and connections are counted
            (``None``: logged only).
    """

    def __init__(self, stats: Stats | None = None) -> None:
        self.stats = stats
        self._entries: dict[str, _Entry] = {}
        self.add("help", self._help, "help", "what each command does and takes")
        self._busy = 0  # requests read and not yet answered, on every connection
        self._idle = trio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no request is being answered (at once if none is)."""
        await self._idle.wait()

    def _begin(self) -> None:
        if not self._busy:
            self._idle = trio.Event()
        self._busy += 1

    def _end(self) -> None:
        self._busy -= 1
        if not self._busy:
            self._idle.set()

    def add(self, name: str, run: Command, usage: str, summary: str) -> None:
        """Add (or replace) the command ``name``; ``usage`` shows its arguments."""
        self._entries[name] = _Entry(run, usage, summary)

    async def _help(self, args: dict[str, Any]) -> dict[str, str]:
        no_arguments(args)
        return {entry.usage: entry.summary for entry in self._entries.values()}

    async def reply(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line (without its newline). Never raises for
        anything a client can send. (A command that would take the connection
        over, a :class:`Session`, is abandoned: there is no connection here.)"""
        reply, session = await self.answer(line)
        if session is not None:
            session.abandon()
        return reply

    async def answer(self, line: bytes) -> tuple[dict[str, Any], Session | None]:
        """The reply to one request line, and the :class:`Session` that takes the
        connection over once it is sent, if the command gave one."""
        request_id: Any = None
        name: Any = None
        try:
            try:
                request = loads(line)
            except UnicodeDecodeError:
                raise ControlError("a request is a line of UTF-8 text") from None
            except ValueError as exc:
                raise ControlError(f"not a JSON request: {exc}") from None
            if not isinstance(request, dict):
                raise ControlError(
                    'a request is a JSON object, such as {"id": 1, "command": "stats"}'
                )
            request_id = request.pop("id", None)
            name = request.pop("command", None)
            if name is None:
                raise ControlError('no "command" in the request: try {"command": "help"}')
            if not isinstance(name, str):
                raise ControlError(f'"command" is a name such as "stats", not {name!r}')
            entry = self._entries.get(name)
            if entry is None:
                known = ", ".join(self._entries)
                raise ControlError(f"unknown command {name!r}: the commands are {known}")
            result = await entry.run(request)
        except ControlError as exc:
            return {"id": request_id, "ok": False, "error": str(exc)}, None
        except Exception as exc:  # the boundary of one request
            fault(self.stats, f"control request {name!r}", exc)
            return {"id": request_id, "ok": False, "error": _internal(exc)}, None
        if isinstance(result, Session):
            return {"id": request_id, "ok": True, "result": result.result}, result
        return {"id": request_id, "ok": True, "result": result}, None


def _internal(exc: Exception) -> str:
    return f"internal error ({type(exc).__name__}); it is logged, and the daemon serves on"


def no_arguments(args: dict[str, Any]) -> None:
    """Refuse arguments a command does not take."""
    if args:
        raise ControlError(f"unexpected argument {next(iter(args))!r}")


def encode(message: dict[str, Any]) -> bytes:
    """One protocol line: compact JSON and a newline (``nan`` and ``inf`` as null)."""
    return json.dumps(_finite(message), separators=(",", ":")).encode() + b"\n"


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``: JSON has no inf."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _error_line(message: str) -> bytes:
    return encode({"id": None, "ok": False, "error": message})


async def serve_control_stream(
    stream: trio.abc.Stream, commands: Commands, *, idle_timeout: float = IDLE_TIMEOUT
) -> None:
    """Answer requests on ``stream`` until the client leaves or breaks a limit; close it.

    ``idle_timeout``: how long without a request before closing (``inf``: never,
    for a supervisor's channel to its worker).
    """
    decoder = Framing("line", max_frame=MAX_REQUEST - 1).decoder()
    async with stream:
        try:
            while True:
                line = await _next_request(stream, decoder, idle_timeout)
                if line is None:
                    return
                session = await _answer(stream, commands, line)
                if session is not None:
                    assert isinstance(stream, trio.SocketStream)  # (_answer saw to it)
                    await session.run(stream)
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except _Unread:
            log.info("control client did not read its reply for %gs; closed", SEND_TIMEOUT)
        except Exception as exc:  # the boundary of one control connection
            fault(commands.stats, "control connection", exc)


class _Unread(Exception):
    """A reply the client did not read in time."""


async def _answer(stream: trio.abc.Stream, commands: Commands, line: bytes) -> Session | None:
    """Answer one request (counted busy until its reply is sent); the session that
    takes the connection over next, if the command gave one."""
    commands._begin()
    session = None
    try:
        reply, session = await commands.answer(line)
        if session is not None:
            why = (
                session.refuse(stream)
                if isinstance(stream, trio.SocketStream)
                else "not on this connection"
            )
            if why is not None:
                session.abandon()
                reply, session = {"id": reply["id"], "ok": False, "error": why}, None
        try:
            data = encode(reply)
        except (TypeError, ValueError) as exc:  # a result JSON cannot carry: ours
            fault(commands.stats, f"control reply {reply!r:.100}", exc)
            data = encode({"id": reply["id"], "ok": False, "error": _internal(exc)})
        with trio.move_on_after(SEND_TIMEOUT) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            raise _Unread
    except BaseException:
        if session is not None:
            session.abandon()
        raise
    finally:
        commands._end()
    return session


async def _next_request(stream: trio.abc.Stream, decoder: Any, idle_timeout: float) -> bytes | None:
    """The next request line; ``None`` when the connection should end (after an
    error line to the client, where there is something to say)."""
    line_deadline = math.inf
    idle_deadline = trio.current_time() + idle_timeout
    while True:
        try:
            line: bytes | None = decoder.next_frame()
        except FramingError:
            await _say(stream, f"request line longer than {MAX_REQUEST} bytes; closing")
            return None
        if line is not None:
            return line
        if decoder.buffered and line_deadline == math.inf:
            line_deadline = trio.current_time() + REQUEST_TIMEOUT
        with trio.move_on_at(min(line_deadline, idle_deadline)):
            data = await stream.receive_some(MAX_REQUEST)
            if not data:
                return None
            decoder.feed(data)
            continue
        if decoder.buffered:
            await _say(stream, f"request line not finished within {REQUEST_TIMEOUT:g}s; closing")
        return None


#: Before closing on a client that broke a limit: how long, and how many more of
#: its bytes, to read and discard, so that the close does not answer unread bytes
#: with a reset that destroys the error line before the client reads it.
_LINGER_SECONDS = 1.0
_LINGER_DISCARD = 2 * MAX_REQUEST


async def _say(stream: trio.abc.Stream, message: str) -> None:
    """A last error line, if the client takes it soon; then our EOF, and a short linger."""
    with trio.move_on_after(_LINGER_SECONDS):
        await stream.send_all(_error_line(message))
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        discarded = 0
        while discarded < _LINGER_DISCARD and (data := await stream.receive_some(MAX_REQUEST)):
            discarded += len(data)


async def serve_control(
    listener: BoundListener,
    commands: Commands,
    gate: AcceptGate | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve control connections on ``listener`` until cancelled; then close it.

    ``gate``: accept only while it is open (connections already accepted go on).
    """
    clients = trio.Semaphore(MAX_CLIENTS)
    refusals = trio.Semaphore(MAX_CLIENTS)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    if gate is not None:
                        await gate.wait_open()
                        await listener.wait_acceptable()
                        if gate.shut:
                            continue
                    sock, _ = await listener.accept()
                except OSError as exc:
                    log.error("control socket %s: accept failed: %s", listener.address, exc)
                    await trio.sleep(0.1)
                    continue
                try:
                    clients.acquire_nowait()
                except trio.WouldBlock:
                    # Told why, with the same linger as any refusal (bounded too:
                    # past that many at once, closed without a word).
                    try:
                        refusals.acquire_nowait()
                    except trio.WouldBlock:
                        sock.close()
                    else:
                        nursery.start_soon(_refuse, stream_for(sock), refusals, commands.stats)
                    continue
                nursery.start_soon(_client, stream_for(sock), commands, clients)
    finally:
        listener.close()


async def _client(stream: trio.SocketStream, commands: Commands, clients: trio.Semaphore) -> None:
    try:
        await serve_control_stream(stream, commands)
    finally:
        clients.release()


async def _refuse(stream: trio.SocketStream, refusals: trio.Semaphore, stats: Stats | None) -> None:
    try:
        async with stream:
            await _say(stream, f"too many control connections ({MAX_CLIENTS})")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception as exc:  # the boundary of one refusal
        fault(stats, "control connection refused", exc)
    finally:
        refusals.release()


class ControlClient:
    """The client end of the control protocol over one stream: request, await the reply.

    Use :func:`open_control` to connect to a control socket.
    """

    def __init__(self, stream: trio.abc.Stream, where: str) -> None:
        self.stream = stream
        self.where = where
        self._decoder = Framing("line", max_frame=1 << 30).decoder()
        self._next_id = 0

    async def request(self, command: str, **args: Any) -> Any:
        """Send one request; return its reply's ``result``.

        Raises:
            ControlError: the daemon answered with an error.
            ControlClosed: the daemon closed the connection before it replied.
            ClientError: the reply was not one.
        """
        self._next_id += 1
        wanted = self._next_id
        try:
            await self.stream.send_all(encode({"id": wanted, "command": command, **args}))
            while True:
                reply = await self._reply()
                # The reply to an earlier request that was given up on (a timeout
                # around request()) comes first: skip it.
                if not (isinstance(reply.get("id"), int) and reply["id"] < wanted):
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ControlClosed(f"{self.where}: connection lost: {exc}") from None
        ok = reply.get("ok")
        if not isinstance(ok, bool) or (ok and "result" not in reply):
            raise ClientError(
                f"{self.where} is not a triodaemon control socket (it answered {reply})"
            )
        if reply.get("id") is None and not ok:  # about the connection, not the request
            raise ClientError(f"{self.where}: {reply.get('error')}")
        if reply.get("id") != wanted:
            raise ClientError(f"{self.where} sent a reply that is not the one asked for: {reply}")
        if not ok:
            raise ControlError(str(reply.get("error")))
        return reply["result"]

    async def _reply(self) -> dict[str, Any]:
        """The next reply line, parsed."""
        while (line := self._decoder.next_frame()) is None:
            data = await self.stream.receive_some()
            if not data:
                raise ControlClosed(f"{self.where} closed the connection before replying")
            self._decoder.feed(data)
        try:
            reply = loads(line)
        except ValueError as exc:
            raise ClientError(
                f"{self.where} is not a triodaemon control socket (it sent something "
                f"that is not JSON: {exc})"
            ) from None
        if not isinstance(reply, dict):
            raise ClientError(
                f"{self.where} is not a triodaemon control socket (it sent {line[:100]!r})"
            )
        return reply

    async def aclose(self) -> None:
        await self.stream.aclose()


async def open_control(path: str) -> ControlClient:
    """Connect to the control socket at ``path``.

    Raises:
        ClientError: nothing listens there (one line, naming the path).
    """
    try:
        stream = await connect(UnixAddress(path))
    except ClientError as exc:
        raise ClientError(f"{exc} (is a daemon running with --control {path}?)") from None
    return ControlClient(stream, f"the daemon at {path}")
