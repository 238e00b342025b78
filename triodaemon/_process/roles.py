"""Process roles: what one triodaemon process is for, behind one small interface.

Strategy: a :class:`Role` owns its server (a :class:`~triodaemon.Daemon`, or the
supervisor of workers), the giver that can hand it to a new process
(:mod:`._handover`), and the control commands it answers. :meth:`Role.run` is
the whole of its serving: get the listening sockets (bind them, inherit them
from systemd or a supervisor, or take them over from the process it succeeds),
serve them, and run beside that what the role needs (systemd's notifications,
a worker's line to its supervisor, a successor's takeover of connections);
stop it with :meth:`Role.drain` or :meth:`Role.abort`. The command line only
builds a role and runs it under its signals (:mod:`.run`); a test runs one
in-process with ``nursery.start(role.run)`` and stops it with ``drain()``,
the way hypercorn's tests run a worker with a shutdown trigger.

Behind a balancer, a role that announces its drains (:attr:`Role.announces`) answers
HAProxy's agent check on ``config.agent`` (:mod:`.._agent`) and, with
``config.drain_delay``, says ``drain`` there that long before its server drains.

- :class:`Standalone`: a daemon, alone in its process.
- :class:`Supervising`: the supervisor of ``--workers N``.
- :class:`Worker`: one of a supervisor's workers.
- A successor (``--takeover``, an upgrade's new process, a worker that
  succeeds another) is any of these started with ``Start.takeover``: its
  sockets and connections come from the process it succeeds (:mod:`.takeover`).
"""

from __future__ import annotations

import abc
import logging
import math
import socket
from collections.abc import Sequence
from typing import Any, ClassVar

import trio

from .._agent import Say, serve_agent
from .._config import ProcessConfig
from .._control import Commands, no_arguments, serve_control, serve_control_stream
from .._daemon import Daemon, DrainSummary
from .._errors import TriodaemonError
from .._handlers import FrameHandler
from .._handover.giver import Giver
from .._handover.taker import Taken
from .._handover.upgrade import Upgrader
from .._handover.wire import Channel
from .._listeners import Address, BoundListener, open_listeners, open_tcp, open_unix
from .._socketfile import check_socket_path
from .._supervisor import Supervisor
from .._systemd import Notifier
from .startup import Start, Startup
from .takeover import finish_takeover, take_over

log = logging.getLogger("triodaemon")


class Role(abc.ABC):
    """One process's part: its server, its giver, the commands it answers.

    Args:
        config: the process's configuration (``config.daemon``: what it serves).
        start: where its sockets come from (and the command line's arguments).
        notifier: where to tell systemd (a worker's supervisor does that for it).
        server: what serves the sockets.
        giver: what can hand them to a new process.
        upgrades: whether this role upgrades by itself (SIGHUP, ``ctl upgrade``).
    """

    quiet: ClassVar[bool] = False
    """Whether its supervisor prints its readiness lines (a worker's)."""
    adopts: ClassVar[bool] = True
    """Whether it can carry on connections it takes over (a supervisor cannot)."""
    has_workers: ClassVar[bool] = False
    """Whether its workers take over the connections of an old supervisor's workers."""
    announces: ClassVar[bool] = True
    """Whether it answers the agent check and announces its drains (a worker's
    supervisor does, for it)."""

    def __init__(
        self,
        config: ProcessConfig,
        start: Start,
        notifier: Notifier,
        server: Daemon | Supervisor,
        giver: Giver,
        *,
        upgrades: bool,
    ) -> None:
        self.config = config
        self.start = start
        self.notifier = notifier
        self.server = server
        self.giver = giver
        self.upgrader = Upgrader(giver, start.argv, notifier) if upgrades else None
        """What starts a new process to take over, if this role upgrades by itself."""
        self.failure: str | None = None
        """Why serving ended early (a worker that failed at the first start, a
        takeover the old process called off)."""
        self.leaving = False
        """A drain is announced (``config.drain_delay``): it begins once the delay is over."""
        self._beside_nursery: trio.Nursery | None = None

    @property
    def draining(self) -> bool:
        """Whether a drain is announced or under way."""
        return self.leaving or self.server.draining

    def drain(self) -> None:
        """Begin the graceful shutdown (after ``config.drain_delay``, announced on the
        agent, the first time); :meth:`run` returns once it is over."""
        delay = self.config.drain_delay if self.announces else 0.0
        nursery = self._beside_nursery
        if not delay or self.draining or nursery is None:
            self.leaving = False
            self.server.drain()
            return
        self.leaving = True
        log.info(
            "draining in %gs (--drain-delay): the agent says drain from now on; serving until then",
            delay,
        )

        async def drain_later() -> None:
            await trio.sleep(delay)
            if self.leaving:
                self.leaving = False
                self.server.drain()

        nursery.start_soon(drain_later)

    def says(self) -> Say:
        """What the agent check hears of this process now."""
        if self.giver.given:
            return "gone"
        return "drain" if self.draining else "ready"

    def abort(self) -> None:
        """Stop at once."""
        self.server.abort()

    async def summary(self) -> str:
        """The counters as one line, as of now (what SIGUSR1 logs)."""
        await trio.lowlevel.checkpoint()
        return self.server.stats.summary()

    @abc.abstractmethod
    async def snapshot(self) -> dict[str, Any]:
        """What ``ctl stats`` reports."""

    def commands(self) -> Commands:
        """What the control socket answers: the server's commands, ``takeover``, and
        ``upgrade`` where this role upgrades by itself."""
        commands = self.server.control_commands()
        upgrader = self.upgrader
        self.giver.add_commands(commands, upgrade=upgrader.upgrade if upgrader else None)
        if self.announces and self.config.drain_delay:
            # (Announced first: the server's own command would drain at once.)

            async def drain(args: dict[str, Any]) -> dict[str, Any]:
                no_arguments(args)
                already = self.draining
                if not already:
                    log.info("drain requested on the control socket")
                    self.drain()
                return {"draining": self.server.connections, "already": already}

            commands.add("drain", drain, "drain", "start the graceful shutdown (as SIGTERM does)")
        return commands

    async def run(
        self, task_status: trio.TaskStatus[tuple[Address, ...]] = trio.TASK_STATUS_IGNORED
    ) -> DrainSummary | None:
        """Get the sockets, serve them until drained, and run what goes beside.

        ``task_status`` gets the bound addresses once the server serves (a
        :class:`~.startup.Startup`, from the command line, also prints the
        readiness lines). Returns the server's summary (``None`` if it stopped
        before it served: :attr:`failure` says why, if it was a takeover the old
        process called off).

        Raises:
            TriodaemonError: the sockets could not be had, or the server could not
                start (a worker failed at the first start): one line says why.
        """
        if isinstance(task_status, Startup):
            startup = task_status
        else:
            startup = Startup(self.notifier, quiet=True, outer=task_status)
        agent = self.config.agent
        agents = await open_tcp(agent, reuse_port=True) if agent and self.announces else []
        try:
            return await self._run(startup, agents)
        finally:
            for listener in agents:
                listener.close()

    async def _run(self, startup: Startup, agents: list[BoundListener]) -> DrainSummary | None:
        listeners, control, handover = await self._sockets(startup)
        commands = self.commands()
        summary: DrainSummary | None = None
        failed: TriodaemonError | None = None
        async with trio.open_nursery() as nursery:
            self._beside_nursery = nursery
            for listener in agents:
                log.info("answering the agent check on %s", listener.address)
                nursery.start_soon(serve_agent, listener, self.says)

            async def serve() -> None:
                nonlocal summary, failed
                try:
                    summary = await self.server.serve(
                        listeners, control=control, commands=commands, task_status=startup
                    )
                except TriodaemonError as exc:  # a worker that failed at the first start
                    failed = exc
                nursery.cancel_scope.cancel()

            # serve() owns the sockets from its first step, even if cancelled at once.
            nursery.start_soon(serve)
            self._beside(nursery, startup, handover)
        if failed is not None:
            raise failed
        return summary

    async def _sockets(
        self, startup: Startup
    ) -> tuple[list[BoundListener], BoundListener | None, tuple[Channel, Taken] | None]:
        """The listening sockets, the control socket, and (taking over) the
        handover under way."""
        start = self.start
        if start.takeover is not None:
            channel, taken = await take_over(
                start.takeover, self.config, adopts=self.adopts, workers=self.has_workers
            )
            self.took_over(taken)
            startup.taken_over(taken.pid, [listener.label for listener in taken.listeners])
            startup.control = taken.control
            return taken.listeners, taken.control, (channel, taken)
        adopted = list(start.passed)
        try:
            bound, control = await bind(self.config, adopted)
        except BaseException:
            for listener in adopted:
                listener.close()
            raise
        listeners = [*adopted, *bound]
        startup.labels = [listener.label for listener in listeners]
        startup.control = control
        return listeners, control, None

    def took_over(self, taken: Taken) -> None:
        """What the process it succeeds gave it, before it serves."""
        log.debug("taking over from pid %d", taken.pid)

    async def wait_to_take_connections(self) -> None:
        """Until a successor may take the old process's connections (at once)."""
        await trio.lowlevel.checkpoint()

    async def takeover_done(self, count: int | None) -> None:
        """A successor's takeover is over: ``count`` connections carried on here
        (``None``: the handover of connections failed; this process serves on)."""
        if count is not None:
            log.info("took over: %d connection%s carried on here", count, "" if count == 1 else "s")

    def _beside(
        self, nursery: trio.Nursery, startup: Startup, handover: tuple[Channel, Taken] | None
    ) -> None:
        """Start what runs beside serving, in ``nursery`` (cancelled when it ends):
        a successor's takeover of the connections, then (or at once) systemd's
        notifications."""
        if handover is not None:
            nursery.start_soon(finish_takeover, *handover, self, startup)
        else:
            nursery.start_soon(self.notifier.run, self.server, self.config.daemon.drain_timeout)


class Standalone(Role):
    """A daemon, alone in its process: it binds, serves, and upgrades itself."""

    def __init__(
        self,
        config: ProcessConfig,
        start: Start,
        notifier: Notifier,
        handler: FrameHandler | None = None,
    ) -> None:
        self.daemon = Daemon(config.daemon, handler)
        giver = Giver.for_daemon(
            self.daemon,
            notifier.send,
            upgrade_timeout=config.upgrade_timeout,
            migrate=config.migrate,
        )
        super().__init__(config, start, notifier, self.daemon, giver, upgrades=True)

    async def snapshot(self) -> dict[str, Any]:
        return self.daemon.snapshot()


class Supervising(Role):
    """The supervisor of ``count`` worker processes, each started with ``argv``."""

    adopts = False
    has_workers = True

    def __init__(self, config: ProcessConfig, start: Start, notifier: Notifier, count: int) -> None:
        self.supervisor = Supervisor(
            config.daemon, count, start.argv, upgrade_timeout=config.upgrade_timeout
        )
        giver = Giver.for_supervisor(self.supervisor, notifier.send, migrate=config.migrate)
        super().__init__(config, start, notifier, self.supervisor, giver, upgrades=True)

    async def snapshot(self) -> dict[str, Any]:
        return await self.supervisor.snapshot()

    async def summary(self) -> str:
        # The workers' counters now, not as of the last poll.
        await self.supervisor.gather()
        return self.supervisor.stats.summary()

    def took_over(self, taken: Taken) -> None:
        # Each of our workers takes over from the old one of its number.
        self.supervisor.predecessors = taken.workers

    async def takeover_done(self, count: int | None) -> None:
        # (A supervisor takes no connection itself: its workers now take theirs.)
        await self.supervisor.release_takeovers()


class Worker(Role):
    """One of a supervisor's workers: a daemon on the sockets it inherited, which
    answers its supervisor over ``start.channel`` and, at an upgrade of the
    supervisor, hands its connections to its successor over ``start.handover_socket``."""

    quiet = True
    announces = False

    def __init__(
        self,
        config: ProcessConfig,
        start: Start,
        notifier: Notifier,
        handler: FrameHandler | None = None,
    ) -> None:
        self.daemon = Daemon(config.daemon, handler)
        giver = Giver.for_daemon(  # (no notify: the supervisor tells systemd)
            self.daemon, upgrade_timeout=config.upgrade_timeout, migrate=config.migrate
        )
        super().__init__(config, start, notifier, self.daemon, giver, upgrades=False)
        self.go = trio.Event()
        """Taking over from an old worker: set when the supervisor says to take its
        connections (the new supervisor's own takeover is complete)."""

    async def snapshot(self) -> dict[str, Any]:
        return self.daemon.snapshot()

    def commands(self) -> Commands:
        # A worker has no control socket of its own: its supervisor's channel.
        return self.daemon.control_commands()

    def _beside(
        self, nursery: trio.Nursery, startup: Startup, handover: tuple[Channel, Taken] | None
    ) -> None:
        super()._beside(nursery, startup, handover)
        ready = startup.ready
        if self.start.channel is not None:
            nursery.start_soon(self._answer_supervisor, ready, self.start.channel)
        if self.start.handover_socket is not None:
            nursery.start_soon(self._serve_successor, ready, self.start.handover_socket)

    async def wait_to_take_connections(self) -> None:
        # Its supervisor's word: the whole new supervisor is ready.
        await self.go.wait()

    async def _answer_supervisor(self, ready: trio.Event, channel: socket.socket) -> None:
        """The worker's side of its socketpair: answer the supervisor once serving;
        drain when the supervisor is gone (its end closed: it exited, or was killed)."""
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(channel))
        await ready.wait()
        commands = self.daemon.control_commands("by the supervisor")

        async def take_connections(args: dict[str, Any]) -> dict[str, Any]:
            self.go.set()  # (the takeover under way, if any, goes on)
            return {}

        commands.add(
            "take-connections",
            take_connections,
            "take-connections",
            "a worker taking over: the new supervisor is ready, take the old worker's connections",
        )
        await serve_control_stream(stream, commands, idle_timeout=math.inf)
        if not self.daemon.draining:
            log.warning("the supervisor is gone: draining")
            self.daemon.drain()

    async def _serve_successor(self, ready: trio.Event, sock: socket.socket) -> None:
        """The worker's handover socket: where the worker that succeeds it, at an
        upgrade of the supervisor, asks for its connections (``--takeover``)."""
        listener = BoundListener.from_socket(sock, owns_path=True)
        try:
            await ready.wait()
            commands = Commands(self.giver.faults)
            commands.add(
                "takeover",
                self.giver.takeover_command(who="an upgrade of the supervisor"),
                "takeover versions=[1]",
                "the worker that succeeds this one takes its connections over",
            )
            await serve_control(listener, commands)
        finally:
            listener.close()


async def bind(
    config: ProcessConfig, passed: Sequence[BoundListener]
) -> tuple[list[BoundListener], BoundListener | None]:
    """Bind the listeners ``config`` names that systemd has not ``passed``, then the
    control socket; every path is checked before any file is touched.

    Raises:
        AddressError: one line (nothing stays bound).
    """
    if config.control is not None:  # (open_listeners checks its own first)
        check_socket_path(config.control.path)
    served = config.daemon
    listeners = await open_listeners(
        _not_passed(served.listen, passed),
        sock_mode=served.sock_mode,
        sock_group=served.sock_group,
        backlog=served.backlog,
    )
    if config.control is None:
        return listeners, None
    try:
        control = await open_unix(
            config.control, mode=config.control_mode, group=config.control_group
        )
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners, control


def _not_passed(addresses: Sequence[Address], passed: Sequence[BoundListener]) -> list[Address]:
    """The addresses to bind: those systemd has not passed a socket for already."""
    left = []
    for address in addresses:
        found = [listener.label for listener in passed if listener.serves(address)]
        if found:
            log.info("%s: systemd passed this socket (%s); serving it once", address, found[0])
        else:
            left.append(address)
    return left
