"""The old process's side of a handover: a :class:`Giver` that a process *uses*.

Strategy (tableflip's ``Upgrader``, which a server holds rather than inherits):
a giver is made for one host (a daemon, or a supervisor of workers: see
:mod:`.host`) and keeps everything of the handover itself: the one under way
(:class:`Handing`), the socket files it gave the taker, what systemd is told.
It answers the control protocol's ``takeover`` (and ``upgrade``, given how),
and runs each handover over its channel: hello, listeners, ready; then the host
stops accepting and its connections move (:mod:`.migration`); then the host
finishes what is left and exits. A failure before the taker is ready changes
nothing; after it, the host accepts again and serves what it still holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from .._config import DEFAULT_UPGRADE_TIMEOUT, requirement_of
from .._control import Command, Commands, ControlError, Session, no_arguments
from .._daemon import Daemon
from .._faults import fault
from .._framing import Framing
from .._listeners import BoundListener, UnixAddress
from .._stats import Stats
from .._supervisor import Supervisor
from .host import ConnectionPool, Host
from .migration import migrate
from .wire import (
    ADOPT_TIMEOUT,
    Channel,
    HandoverError,
    ListenerRecord,
    choose_version,
    handler_name,
    not_our_user,
    peer_pid,
    pid_of,
)

log = logging.getLogger("triodaemon")

T = TypeVar("T")

#: Says "upgrade" with the outcome: see :mod:`.upgrade`.
Upgrade = Callable[[str], Awaitable[dict[str, Any]]]


@attrs.frozen
class Given:
    """What a handover did, as the giver saw it."""

    pid: int
    """The process that took over."""
    listeners: int
    """Listening sockets it took (the control socket among them)."""
    handed: int
    """Connections it took."""
    left: int
    """Connections that finish in the giver (owed replies, a different framing, or
    ``migrate`` off)."""
    workers: int = 0
    """A supervisor's: its workers, which hand their connections over each to its
    successor, after this (0: the new process has no workers to take them: they
    finish here)."""
    migrate: bool = True
    """Whether connections move at all (else they finish here)."""


@attrs.define(eq=False)
class Handing:
    """One handover from this process, from the request until it is given or called off."""

    who: str
    """What asked for it, for logs: ``SIGHUP``, ``ctl upgrade``, ``--takeover from pid 42``."""
    ready_by: float
    """When (trio's clock) the new process must be ready, or the handover is called off."""
    kill: Callable[[], Awaitable[bool]] | None = None
    """How to end the taker, if it is ours (an upgrade's child): whether it is gone.
    A stalled taker that is gone had no connection it did not adopt."""
    taker: int = 0
    """The taker's pid, where we know it better than the kernel can say (a socketpair
    we made reports our own pid as its peer's)."""
    committed: bool = False
    """The taker is ready and this process has stopped accepting: no way back but
    the taker's failure."""
    given: Given | None = None
    failure: str | None = None
    finished: trio.Event = attrs.field(factory=trio.Event)

    def fail(self, why: str) -> None:
        if not self.finished.is_set():
            self.failure = why
            self.finished.set()

    def succeed(self, given: Given) -> None:
        self.given = given
        self.finished.set()


def _silent(*fields: str) -> None:
    """Tells nobody (no service manager)."""


@attrs.define(eq=False)
class Giver:
    """Hands ``host``'s listening sockets (and the connections of ``pool``) to a
    new process that asks for them.

    Args:
        host: the process's daemon or supervisor.
        framing: the host's; a taker that frames otherwise is refused.
        proxy_protocol: the host's PROXY header requirement
            (:func:`~triodaemon._config.requirement_of`); a taker that requires
            another is refused.
        handler: the host's frame handler's name (:func:`.wire.handler_name`):
            connections move only to a taker that names the same.
        faults: where this process counts its own internal errors.
        upgrade_timeout: seconds the new process has to be ready.
        drain_timeout: seconds the connections have to move (and the drain after).
        migrate: whether connections move at all (else they finish here).
        pool: the host's connections, if it serves any itself.
        workers: a supervisor's: each worker's handover socket, by number.
        notify: where to tell a service manager: ``RELOADING=1`` when a handover
            begins, ``MAINPID=`` and ``READY=1`` once the new process serves,
            ``READY=1`` again if it fails.
    """

    host: Host
    framing: Framing
    handler: str
    faults: Stats
    upgrade_timeout: float
    drain_timeout: float
    migrate: bool = True
    pool: ConnectionPool | None = None
    workers: Callable[[], Mapping[int, str]] | None = None
    notify: Callable[..., None] = _silent
    proxy_protocol: dict[str, object] | None = None
    _handing: Handing | None = attrs.field(default=None, init=False)
    _given_up: list[tuple[BoundListener, tuple[int, int]]] = attrs.field(factory=list, init=False)
    _stopped: bool = attrs.field(default=False, init=False)  # the host accepts no more

    @classmethod
    def for_daemon(
        cls,
        daemon: Daemon,
        notify: Callable[..., None] | None = None,
        *,
        upgrade_timeout: float = DEFAULT_UPGRADE_TIMEOUT,
        migrate: bool = True,
    ) -> Giver:
        """The giver of ``daemon``: its sockets, and its connections unless
        ``migrate`` is false (they then finish here, as in a drain)."""
        config = daemon.config
        return cls(
            daemon,
            config.framing,
            handler_name(daemon.handler),
            daemon.stats,
            upgrade_timeout,
            config.drain_timeout,
            migrate,
            pool=daemon,
            notify=notify or _silent,
            proxy_protocol=requirement_of(config.proxy_protocol),
        )

    @classmethod
    def for_supervisor(
        cls,
        supervisor: Supervisor,
        notify: Callable[..., None] | None = None,
        *,
        migrate: bool = True,
    ) -> Giver:
        """The giver of ``supervisor``: its sockets; its workers hand their
        connections over each to its successor (unless ``migrate`` is false)."""
        config = supervisor.config
        return cls(
            supervisor,
            config.framing,
            "echo",  # (the workers')
            supervisor.faults,
            supervisor.upgrade_timeout,
            config.drain_timeout,
            migrate,
            workers=supervisor.worker_handovers,
            notify=notify or _silent,
            proxy_protocol=requirement_of(config.proxy_protocol),
        )

    @property
    def given(self) -> bool:
        """Whether another process has taken this one's place (it accepts now)."""
        return self._stopped

    def begin(self, who: str) -> Handing:
        """Reserve this process for one handover, asked for by ``who``.

        Raises:
            HandoverError: a drain or another handover is under way.
        """
        if self.host.draining:
            raise HandoverError("the daemon is draining; an upgrade cannot start now")
        if self._handing is not None:
            raise HandoverError(f"an upgrade is already under way ({self._handing.who})")
        ready_by = trio.current_time() + self.upgrade_timeout
        handing = self._handing = Handing(who, ready_by)
        self.host.upgrading = who
        self._tell(
            "RELOADING=1",
            f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
            f"STATUS=upgrading ({who})",
        )
        return handing

    def end(self, handing: Handing, why: str) -> None:
        """Call off ``handing`` (before it began, or after it failed): serve on."""
        if self._handing is handing:
            self._handing = None
            self.host.upgrading = None
            if not handing.finished.is_set():
                self._tell("READY=1", "STATUS=serving (the upgrade failed)")
        handing.fail(why)

    def take_back(self) -> None:
        """A handover that succeeded failed after all (the new process exited while
        this one still had work to hand it): accept again, and serve on."""
        self._handing = None
        self.host.upgrading = None
        self._accept_again()

    def takeover_command(
        self, expected: Handing | None = None, who: str = "a takeover on the control socket"
    ) -> Command:
        """The ``takeover`` command: a new process asks for this process's sockets.

        ``expected``: the handover it belongs to (an upgrade that started the new
        process); ``None``: a process that came by itself (``--takeover``), which
        the log calls ``who``.
        """

        async def takeover(args: dict[str, Any]) -> Session:
            versions = args.pop("versions", None)
            no_arguments(args)
            try:
                version = choose_version(versions)
                if expected is None:
                    handing = self.begin(who)
                elif expected is self._handing and not expected.finished.is_set():
                    handing = expected
                else:
                    raise HandoverError("this upgrade is over; start another")
            except HandoverError as exc:
                log.warning("takeover refused: %s", exc)
                raise ControlError(str(exc)) from None

            async def run(stream: trio.SocketStream) -> None:
                await self.give(handing, Channel(stream.socket, "the new process"))

            return Session(
                {"version": version, "pid": os.getpid()},
                run,
                lambda: self.end(handing, "refused, or not answered"),
                not_our_user,
            )

        return takeover

    def add_commands(
        self,
        commands: Commands,
        source: str = "on the control socket",
        upgrade: Upgrade | None = None,
    ) -> None:
        """Add ``takeover`` (for a new process) to ``commands``, and ``upgrade`` if
        given how; ``source`` says where requests come from, in the log lines."""
        commands.add(
            "takeover",
            self.takeover_command(),
            "takeover versions=[1]",
            "a new process takes the sockets over (triodaemon --takeover)",
        )
        if upgrade is None:
            return

        async def run_upgrade(args: dict[str, Any]) -> dict[str, Any]:
            no_arguments(args)
            return await upgrade(f"ctl upgrade {source}")

        commands.add(
            "upgrade",
            run_upgrade,
            "upgrade",
            "start a new copy that takes over every socket and connection (as SIGHUP does)",
        )

    async def give(self, handing: Handing, channel: Channel) -> None:
        """Run one handover over ``channel``; serve on if it fails, retire if not."""
        try:
            given = await self.unless_a_drain(handing, partial(self._exchange, handing, channel))
            if given is None:
                raise HandoverError("a drain began")
        except Exception as exc:  # the boundary of one handover channel
            if not isinstance(exc, HandoverError):
                fault(self.faults, f"upgrade ({handing.who})", exc)
                exc = HandoverError(f"internal error ({type(exc).__name__})")
                if self._stopped:  # (it failed after the host stopped accepting)
                    self._accept_again()
            log.error(
                "upgrade (%s) called off: %s; %s",
                handing.who,
                exc,
                "draining" if self.host.draining else "serving on",
            )
            self.end(handing, str(exc))
            # Tell it, if it listens: a taker that serves already then stops.
            with trio.move_on_after(1), contextlib.suppress(HandoverError):
                await channel.send({"type": "error", "error": str(exc)})
            return
        finally:
            await channel.aclose()
        handing.succeed(given)
        log.info(
            "handed over to pid %d (%s): %d listener%s, %d connection%s; "
            "%d connection%s finish%s here",
            given.pid,
            handing.who,
            given.listeners,
            "" if given.listeners == 1 else "s",
            given.handed,
            "" if given.handed == 1 else "s",
            given.left,
            "" if given.left == 1 else "s",
            "es" if given.left == 1 else "",
        )
        self.host.handed_over(given.pid, self.take_back, successors=given.workers > 0)

    async def unless_a_drain(self, handing: Handing, run: Callable[[], Awaitable[T]]) -> T | None:
        """``run()``, cancelled (``None``) if a drain begins before ``handing`` is
        committed: a committed one finishes (the new process serves already)."""
        result: T | None = None
        try:
            async with trio.open_nursery() as nursery:

                async def call_off() -> None:
                    await self.host.wait_draining()
                    if not handing.committed:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(call_off)
                result = await run()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            # run()'s own exception, not the group the nursery wraps it in (call_off
            # raises nothing of its own).
            inner = getattr(exc, "exceptions", None)  # (BaseExceptionGroup: 3.11 on)
            if inner is not None and len(inner) == 1:
                raise inner[0] from None
            raise
        return result

    async def _exchange(self, handing: Handing, channel: Channel) -> Given:
        """The giver's messages, once the ``takeover`` request is answered.

        Until the taker is ready (by ``handing.ready_by``) nothing changes here;
        then the host stops accepting and its socket files become the taker's;
        then its connections move in batches. If the taker fails while they
        move, the host accepts again and serves whatever it still holds.

        Raises:
            HandoverError: why the handover was called off.
        """
        pid = handing.taker or peer_pid(channel.sock)  # (not the taker's own word)
        with trio.move_on_at(handing.ready_by) as scope:
            hello, _, stray = await channel.receive("hello")
            for sock in stray:
                sock.close()
            pid = pid or pid_of(hello)
            channel.where = f"the new process (pid {pid})"
            self._check_framing(hello, pid)
            listeners = self._listeners()
            workers = self.workers() if self.workers is not None else {}
            await channel.send(
                {
                    "type": "listeners",
                    "pid": os.getpid(),
                    "listeners": [record.to_json() for record, _ in listeners],
                    **({"workers": _workers_to_json(workers)} if self.workers else {}),
                },
                fds=[fd for _, fd in listeners],
            )
            await channel.receive("ready")
        if scope.cancelled_caught:
            raise HandoverError(
                f"the new process{f' (pid {pid})' if pid else ''} was not ready within "
                f"{self.upgrade_timeout:g}s"
            )
        handing.committed = True
        self._stop_accepting(pid)
        log.info(
            "upgrade (%s): pid %d serves; this process accepts no more and hands over what it has",
            handing.who,
            pid,
        )
        handed, left = await self._move_connections(hello, pid, handing, channel)
        # (If it is gone now, it has everything it adopted; the rest finishes here either way.)
        with contextlib.suppress(HandoverError):
            await channel.send({"type": "done", "handed": handed, "left": left})
        followed = len(workers) if hello.get("workers") is True else 0
        if workers and not followed:
            log.info(
                "the new process (pid %d) has no workers to take over ours: "
                "their connections finish here",
                pid,
            )
        return Given(pid, len(listeners), handed, left, followed, self.migrate)

    def _check_framing(self, hello: dict[str, Any], pid: int) -> None:
        if hello.get("framing") != self.framing.to_json():
            raise HandoverError(
                f"the new process (pid {pid}) frames differently from this daemon "
                f"({self.framing.describe()}): the clients of these sockets would meet "
                "another protocol; give it the same framing flags, or restart instead"
            )
        if hello.get("proxy_protocol") != self.proxy_protocol:
            mine = "requires" if self.proxy_protocol is not None else "does not require"
            raise HandoverError(
                f"the new process (pid {pid}) differs from this daemon, which {mine} a "
                "PROXY header (--proxy-protocol, --proxy-from): its clients would be "
                "trusted otherwise; give it the same flags, or restart instead"
            )

    async def _move_connections(
        self, hello: dict[str, Any], pid: int, handing: Handing, channel: Channel
    ) -> tuple[int, int]:
        """Hand the host's connections over, if both sides want them moved: how many
        were, and how many finish here."""
        pool = self.pool
        if pool is None or not self.migrate:
            return 0, self.host.connections
        if hello.get("migrate") is not True:
            log.info(
                "the new process (pid %d) takes no connections itself "
                "(--no-migrate, or a supervisor of workers): they finish here",
                pid,
            )
            return 0, self.host.connections
        if hello.get("handler", "echo") != self.handler:
            log.warning(
                "the new process (pid %d) runs another frame handler (%s, not %s); "
                "connections finish here instead of moving",
                pid,
                hello.get("handler"),
                self.handler,
            )
            return 0, self.host.connections
        try:
            return await migrate(
                pool,
                channel,
                trio.current_time() + self.drain_timeout,
                adopt_timeout=min(ADOPT_TIMEOUT, self.upgrade_timeout),
                kill=handing.kill,
            )
        except BaseException:  # the taker failed (or we are cancelled): serve on
            self._accept_again()
            raise

    def _listeners(self) -> list[tuple[ListenerRecord, int]]:
        """Every listening socket (the control socket last), described, with its descriptor."""
        serving, control = self.host.listening()
        found = [(listener, False) for listener in serving]
        if control is not None:
            found.append((control, True))
        return [
            (
                ListenerRecord(
                    str(listener.address),
                    listener.address.path if isinstance(listener.address, UnixAddress) else None,
                    is_control,
                    listener.unix_identity,
                    listener.label,
                ),
                listener.sock.fileno(),
            )
            for listener, is_control in found
            if listener.sock.fileno() >= 0
        ]

    def _stop_accepting(self, taker: int) -> None:
        """The taker (pid) accepts now: the host stops, and leaves it the socket files."""
        self._tell(f"MAINPID={taker}", "READY=1", f"STATUS=handing over to pid {taker}")
        self.host.stop_accepting()
        self._stopped = True
        serving, control = self.host.listening()
        for listener in [*serving, *([control] if control is not None else [])]:
            identity = listener.disown()
            if identity is not None:
                self._given_up.append((listener, identity))

    def _accept_again(self) -> None:
        """The taker failed after all: the host accepts again, and owns its socket
        files again."""
        for listener, identity in self._given_up:
            listener.unix_identity = identity
        self._given_up.clear()
        self._stopped = False
        self.host.accept_again()
        self._tell(f"MAINPID={os.getpid()}", "READY=1", "STATUS=serving (the upgrade failed)")

    def _tell(self, *messages: str) -> None:
        """``notify(*messages)``: a library user's function, so a boundary (what it
        raises is counted and logged; the handover goes on)."""
        try:
            self.notify(*messages)
        except Exception as exc:
            fault(self.faults, "the giver's notify", exc)


def _workers_to_json(workers: Mapping[int, str]) -> list[dict[str, Any]]:
    return [{"number": number, "path": path} for number, path in workers.items()]
