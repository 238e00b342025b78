"""Worker processes: one supervisor binds every socket once and keeps N workers serving them.

Strategy: the supervisor is what the command line serves when ``--workers N``
is above 1, with the interface of a :class:`~triodaemon.Daemon` (``serve``,
``drain``, ``abort``, ``stats``), so signals, systemd and the control socket
treat both alike. It binds the listeners and starts each worker as a new
program (this interpreter, triodaemon's entry point) with the same arguments
and hidden ones: its number, the listening sockets' descriptors (inherited,
shared: the kernel's one accept queue per socket feeds every worker), one end
of a socketpair, and a listening socket of its own in a private directory,
where its successor asks for its connections at an upgrade (see _handover). Over that socketpair the supervisor speaks the control protocol
(:mod:`._control`) as a client: the worker answers once it serves (that is its
readiness), reports ``stats`` and ``connections`` (which the supervisor's own
control socket aggregates), and drains when told. A worker whose socketpair
reaches EOF (the supervisor died, even by SIGKILL) drains by itself.

Workers run in sessions of their own, so a Ctrl-C on the terminal reaches the
supervisor alone, which drains them all in parallel. Their log lines come
through a pipe and are logged again by the supervisor, whole, at their own
level, behind ``worker N (pid P):``. A worker that dies is restarted: at once
if it had served a while, else after a delay that doubles up to
``BACKOFF_LIMIT``. Only a worker that reports a failure of its own before it
ever served in the first start (it exits with a code: a configuration that
cannot work) ends the start (exit 1, with the worker's last words); one ended
by a signal (the OOM killer, an operator) is started again like any other.

``--max-connections`` is the whole service's: each worker is started with its
share (see :func:`shares`). As the workers share each listening socket, one
at its share leaves new connections in the queue for the others.

Each worker's slot, its pipe and its log relay is an exception boundary: a
failure of the supervisor's own code there is logged with its traceback and
counted (``internal`` errors), that worker is killed and started again, and
the others serve on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ._config import DEFAULT_UPGRADE_TIMEOUT, DaemonConfig
from ._control import (
    LOG_LEVELS,
    Commands,
    ControlClient,
    ControlError,
    no_arguments,
    serve_control,
)
from ._daemon import CONTROL_GRACE, DrainSummary
from ._errors import ClientError, TriodaemonError
from ._faults import fault
from ._listeners import AcceptGate, Address, BoundListener
from ._peers import ConnectionState
from ._program import exit_reason, without_options
from ._reports import log_level_command, stats_report
from ._stats import Stats
from ._workers import (
    WorkerProcess,
    add_report,
    handover_directory,
    handover_socket,
    relay_lines,
    shares,
    worker_command,
)

log = logging.getLogger("triodaemon")

#: Seconds a worker may take from its start to its first answer (its readiness).
START_TIMEOUT = 30.0
#: A worker that served at least this long before it died was not failing at
#: start: it is restarted at once, and its count of failures begins again.
STABLE_AFTER = 10.0
#: The first delay before restarting a worker that failed at start; it doubles
#: with each failure in a row, up to ``BACKOFF_LIMIT``.
FIRST_BACKOFF = 0.2
BACKOFF_LIMIT = 30.0
#: How often the supervisor gathers the workers' counters (for SIGUSR1 and systemd).
POLL_INTERVAL = 1.0
#: After the drain deadline, how long a worker may still take before it is killed.
EXIT_GRACE = 5.0


class Supervisor:
    """Serve the daemon's sockets with ``count`` worker processes.

    Args:
        config: the daemon's configuration (its limits, for the reports; the
            workers get theirs from ``argv``).
        count: how many workers (2 or more).
        argv: the command line's arguments, given to every worker as they are
            (a worker ignores the addresses in them and serves what it inherits).
        upgrade_timeout: handed over to a new supervisor, how long its workers may
            take to be ready (before the old workers' drain deadline begins).
    """

    def __init__(
        self,
        config: DaemonConfig,
        count: int,
        argv: Sequence[str],
        *,
        upgrade_timeout: float = DEFAULT_UPGRADE_TIMEOUT,
    ) -> None:
        self.config = config
        self.upgrade_timeout = upgrade_timeout
        self.argv = without_options(argv)  # a worker takes over from its own predecessor
        self.stats = Stats()
        """The workers' counters, summed (and the supervisor's own internal errors):
        refreshed every ``POLL_INTERVAL``."""
        self.faults = Stats()  # the supervisor's own internal errors
        self._shares = shares(config.max_connections, count)
        self.summary: DrainSummary | None = None
        self._workers = [WorkerProcess(number) for number in range(1, count + 1)]
        self._listeners: Sequence[BoundListener] = ()
        self._control: BoundListener | None = None
        self._draining = False
        self._forced = False
        self._drain_started = trio.Event()
        self._drain_deadline = math.inf
        self._all_ready = trio.Event()  # every worker serves, or the first start failed
        self._started_all = False  # every worker has served: the first start is complete
        self._start_failure: str | None = None
        self._started = math.nan
        self._started_wall = math.nan
        self._open = 0
        self._nursery: trio.Nursery | None = None
        self._retired: list[dict[str, Any]] = []  # the last stats of workers that ended
        self.upgrading: str | None = None
        """What a handover under way is for (see ``Daemon.upgrading``)."""
        self.predecessors: dict[int, str] = {}
        """Taking over from another supervisor: the handover socket of each of its
        workers, by number, for the first start of ours of that number."""
        self._gate = AcceptGate()  # the control socket's
        self._take_back: Callable[[], None] | None = None  # a handover's undo
        self._retiring = False  # handed over: the workers hand theirs over, then exit
        self._handover_dir: str | None = None  # the workers' handover sockets
        self._takeovers: list[WorkerProcess] = []  # taking over from predecessors, not yet told to
        self._released = False  # our own takeover is done: workers take connections at once
        self._keepers: trio.Nursery | None = None

    # -- the Daemon-like interface ------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def connections(self) -> int:
        """Connections open in all workers, as of the last poll."""
        return self._open

    async def wait_draining(self) -> None:
        await self._drain_started.wait()

    def drain(self) -> None:
        """Drain every worker in parallel; :meth:`serve` returns once all have exited
        (at once, starting none, if it has not begun)."""
        if self._draining:
            return
        self._draining = True
        self._drain_started.set()
        if self._nursery is None:  # (before serve(): no worker to drain)
            self._all_ready.set()
            return
        if self._retiring:
            # Handed over: the new supervisor serves; our workers finish handing
            # their connections to its workers (or are drained after a while).
            log.info("draining: the workers finish handing their connections over first")
            return
        self._drain_workers()

    async def _reap(self) -> None:
        """Kill any worker still running, wait for it (``EXIT_GRACE`` at most), and
        close its pipes: no worker outlives the supervisor's :meth:`serve`."""
        with trio.CancelScope(shield=True), trio.move_on_after(EXIT_GRACE):
            for worker in self._workers:
                process = worker.process
                if process is not None:
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
                    if process.stderr is not None:
                        await process.stderr.aclose()

    def _drain_workers(self) -> None:
        self._drain_deadline = trio.current_time() + self.config.drain_timeout
        self._all_ready.set()  # a drain (over the control socket) before every worker served
        log.info(
            "draining %d workers (deadline %gs)", len(self._workers), self.config.drain_timeout
        )
        assert self._nursery is not None, "drain() before serve()"
        for worker in self._workers:
            self._nursery.start_soon(self._tell_to_drain, worker)
        # Our own descriptors of the listening sockets: once the workers have closed
        # theirs, nobody holds them and new connections are refused (and our Unix
        # socket files go now).
        for listener in self._listeners:
            listener.close()

    def abort(self) -> None:
        """Kill every worker at once."""
        self._forced = True
        if not self._draining:
            self.drain()
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.kill()

    async def serve(
        self,
        listeners: Sequence[BoundListener],
        *,
        control: BoundListener | None = None,
        commands: Commands | None = None,
        task_status: trio.TaskStatus[tuple[Address, ...]] = trio.TASK_STATUS_IGNORED,
    ) -> DrainSummary:
        """Start the workers; report the addresses once every worker serves; return
        once all have exited after a drain. ``commands``: what the control socket
        answers (:meth:`control_commands` by default).

        Raises:
            TriodaemonError: a worker failed at the first start (with its last words).
        """
        self._listeners = listeners
        self._control = control
        self._started, self._started_wall = time.monotonic(), time.time()
        self._handover_dir = handover_directory()
        if commands is None:
            commands = self.control_commands()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if control is not None:
                    await nursery.start(serve_control, control, commands, self._gate)
                async with trio.open_nursery() as keepers:
                    self._keepers = keepers
                    for worker in self._workers:
                        keepers.start_soon(self._keep, worker)
                    await self._all_ready.wait()
                    if self._start_failure is not None:
                        keepers.cancel_scope.cancel()
                    elif self._started_all:
                        task_status.started(tuple(listener.address for listener in listeners))
                        nursery.start_soon(self._poll)
                    # (Else a drain came first: the keepers end as the workers exit.)
                with trio.move_on_after(CONTROL_GRACE):  # a ctl upgrade's answer, say
                    await commands.wait_idle()
                nursery.cancel_scope.cancel()
        finally:
            for listener in listeners:
                listener.close()
            if control is not None:
                control.close()
            await self._reap()  # a failed start, or a cancellation: no orphans
            if self._handover_dir is not None:
                shutil.rmtree(self._handover_dir, ignore_errors=True)
        if self._start_failure is not None:
            raise TriodaemonError(self._start_failure)
        self.summary = DrainSummary(0, 0, self._forced)
        log.info(
            "shutdown complete: every worker has exited%s", " (forced)" if self._forced else ""
        )
        return self.summary

    # -- what a handover to a new supervisor uses (see _handover.host) -------------

    def listening(self) -> tuple[Sequence[BoundListener], BoundListener | None]:
        return self._listeners, self._control

    def stop_accepting(self) -> None:
        """The new supervisor accepts now (our workers stop as it hands them over)."""
        self._gate.close()

    def accept_again(self) -> None:
        self._gate.open()

    def worker_handovers(self) -> dict[int, str]:
        """Where each serving worker hands its connections over (its handover socket)."""
        return {
            worker.number: worker.handover_path
            for worker in self._workers
            if worker.ready and worker.handover_path is not None
        }

    def handed_over(self, taker: int, take_back: Callable[[], None], *, successors: bool) -> None:
        """Our workers hand their connections over to the new ones and exit; we exit
        when they all have (those that cannot are drained after a while). With no
        ``successors`` (the new process has no workers) they drain instead."""
        if not successors:
            self.drain()
            return
        self._retiring = True
        self._take_back = take_back
        log.info("every worker hands its connections over to its successor, then exits")
        assert self._nursery is not None
        self._nursery.start_soon(self._retire_stragglers)
        self._nursery.start_soon(self._watch_successor, taker)

    async def _watch_successor(self, pid: int) -> None:
        """If the new supervisor exits while our workers are still handing over, the
        upgrade has failed after all: take the sockets back and serve on."""
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):  # gone already, or no pidfds (not Linux)
            return
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        alive = any(w.process is not None and w.process.returncode is None for w in self._workers)
        if not self._retiring or self._keepers is None or not alive:
            return  # (nothing of ours serves any more: we are exiting)
        log.error(
            "the new supervisor (pid %d) exited while the workers were handing over; "
            "taking the sockets back and serving on",
            pid,
        )
        self._retiring = False
        if self._take_back is not None:
            self._take_back()
        for worker in self._workers:
            if worker.process is None or worker.process.returncode is not None:
                self._keepers.start_soon(self._keep, worker)

    async def _retire_stragglers(self) -> None:
        await trio.sleep(self.upgrade_timeout + self.config.drain_timeout)
        if any(w.process is not None and w.process.returncode is None for w in self._workers):
            log.warning("workers still serving after the upgrade: draining them")
            self._draining = True
            self._drain_started.set()
            self._drain_workers()

    def adopt(self, sock: socket.socket, state: ConnectionState) -> None:
        """A supervisor serves no connection itself: one handed to it is closed."""
        log.error("%s handed to the supervisor: closed", state.peer)
        sock.close()

    async def release_takeovers(self) -> None:
        """Our takeover from the old supervisor is done: tell each worker taking over
        from an old one to go ahead (the old one then hands its connections over)."""
        self._released = True
        workers, self._takeovers = self._takeovers, []
        for worker in workers:
            with contextlib.suppress(ClientError, ControlError):
                await worker.ask("take-connections")

    # -- the workers ----------------------------------------------------------------

    async def _keep(self, worker: WorkerProcess) -> None:
        """Run one worker slot: start, watch, restart with backoff, until the drain."""
        while not self._draining and not self._retiring:
            try:
                why, served, own = await self._run_once(worker)
            except Exception as exc:  # the boundary of one worker's slot
                fault(self.faults, f"worker {worker.number}", exc)
                why, served, own = f"failed in the supervisor ({type(exc).__name__})", 0.0, False
                await self._stop(worker)
            self._retire(worker)
            if self._draining or self._retiring:
                worker.state = "exited"
                log.info("worker %d (pid %s) %s", worker.number, worker.pid, why)
                return
            if not self._started_all and own and served <= 0:
                # A failure of its own before it ever served, in the first start: a
                # configuration that cannot work. The start fails, with the first reason.
                if self._start_failure is None:
                    words = "; ".join(worker.last_words[-3:]) or "no output"
                    ran = f" before it served: {words}" if served >= 0 else ""
                    self._start_failure = f"worker {worker.number} {why}{ran}"
                    self._all_ready.set()
                return
            if served >= STABLE_AFTER:
                worker.failures = 0
                delay = 0.0
            else:
                worker.failures += 1
                delay = min(BACKOFF_LIMIT, FIRST_BACKOFF * 2 ** (worker.failures - 1))
            log.error(
                "worker %d%s %s%s; starting it again%s",
                worker.number,
                f" (pid {worker.pid})" if served >= 0 else "",
                why,
                f" after serving {served:.1f}s" if served > 0 else "",
                f" in {delay:g}s" if delay else "",
            )
            if delay >= BACKOFF_LIMIT:
                log.error(
                    "worker %d keeps failing at start (%d times in a row); trying again every "
                    "%gs while the other workers serve",
                    worker.number,
                    worker.failures,
                    BACKOFF_LIMIT,
                )
            worker.state = f"waiting {delay:g}s to start again" if delay else "starting"
            with trio.move_on_after(delay):
                await self._drain_started.wait()
            worker.restarts += 1

    async def _stop(self, worker: WorkerProcess) -> None:
        """Kill the worker's process, if it runs, and wait for it."""
        process = worker.process
        if process is not None and process.returncode is None:
            process.kill()
            with trio.move_on_after(EXIT_GRACE):
                await process.wait()

    async def _run_once(self, worker: WorkerProcess) -> tuple[str, float, bool]:
        """Start the worker, make it ready, and wait for it to exit.

        Returns why it ended (``exited with code 1``, ``killed by SIGKILL``, or
        ``could not be started: ...``), for how long it had served (0 if it
        never was ready; -1 if it never ran), and whether the end was its own
        (it exited with a code, or could not be started at all), not a signal's
        (killed by one, or exited with 128+N for a stop signal N).
        """
        worker.state = "starting"
        fds = [listener.sock.fileno() for listener in self._listeners]
        share = self._shares[worker.number - 1]
        command = worker_command(worker, self.argv, share, self._listeners)
        if worker.number in self.predecessors:
            worker.predecessor = self.predecessors.pop(worker.number)
        predecessor = worker.predecessor
        if predecessor is not None and not await trio.Path(predecessor).exists():
            predecessor = worker.predecessor = None  # it has handed over (or is gone)
        if predecessor is not None:
            command += ["--takeover", predecessor]  # its connections, once we say so
        try:
            mine, theirs = socket.socketpair()
        except OSError as exc:  # out of descriptors, say
            return f"could not be started: {exc.strerror or exc}", -1.0, True
        command += ["--channel", str(theirs.fileno())]
        passed = [*fds, theirs.fileno()]
        handover, worker.handover_path = handover_socket(self._handover_dir, worker)
        if handover is not None:
            command += ["--handover-socket", str(handover.fileno())]
            passed.append(handover.fileno())
        try:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=passed,
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
            )
        except OSError as exc:
            mine.close()
            return f"could not be started: {exc.strerror or exc}", -1.0, True
        finally:
            theirs.close()
            if handover is not None:
                handover.close()  # the worker's now
        if predecessor is not None and not self._released:
            self._takeovers.append(worker)
        worker.process = process
        worker.ready = False
        worker.started = time.monotonic()
        worker.last_words = []
        worker.level = logging.WARNING  # (a line before any log line: its own error line)
        worker.stats = None
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(mine))
        worker.channel = ControlClient(stream, f"worker {worker.number}")
        log.debug("started worker %d (pid %d)", worker.number, process.pid)
        relayed = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                assert process.stderr is not None
                nursery.start_soon(self._relay, worker, process.stderr, relayed)
                nursery.start_soon(self._handshake, worker)
                code = await process.wait()
                served = time.monotonic() - worker.served_from if worker.ready else 0.0
                worker.ready = False
                with trio.move_on_after(1):  # its last lines, up to its EOF
                    await relayed.wait()
                nursery.cancel_scope.cancel()
        finally:
            worker.ready = False
            worker.channel = None
            await trio.aclose_forcefully(stream)
        # Its own end: an exit code, but for 128+N, which a worker stopped by signal N
        # while starting exits with (as the command line does).
        return exit_reason(code), served, 0 <= code <= 128

    def _retire(self, worker: WorkerProcess) -> None:
        """Keep what a worker that ended had counted (as of its last report), so that
        the totals never go backwards."""
        last, worker.stats = worker.stats, None
        if last is not None:
            self._retired.append(last)

    async def _handshake(self, worker: WorkerProcess) -> None:
        """Wait for the worker's first answer: it serves. Kill it if none comes in time."""
        assert worker.channel is not None
        assert worker.process is not None
        with trio.move_on_after(START_TIMEOUT):
            try:
                report = await worker.channel.request("stats")
            except (ClientError, ControlError):
                return  # it is exiting: _run_once sees the exit
            if not self._is_report(worker, report):
                worker.process.kill()
                return
            worker.stats = report
            worker.ready = True
            worker.served_from = time.monotonic()
            worker.state = "serving"
            log.debug("worker %d (pid %d) serves", worker.number, worker.process.pid)
            if all(other.ready for other in self._workers) and self._start_failure is None:
                self._started_all = True
                self._all_ready.set()
            if self._draining:  # a drain that came while it was starting
                await self._tell_to_drain(worker)
            elif self._released and worker.predecessor is not None:
                # Started again while its predecessor still serves (the last try
                # failed): it takes the old worker's connections at once.
                with contextlib.suppress(ClientError, ControlError):
                    await worker.ask("take-connections")
            return
        log.error("worker %d did not start within %gs; killing it", worker.number, START_TIMEOUT)
        worker.last_words.append(f"not ready within {START_TIMEOUT:g}s")
        worker.process.kill()

    async def _relay(
        self, worker: WorkerProcess, stderr: trio.abc.ReceiveStream, done: trio.Event
    ) -> None:
        """Log the worker's stderr lines again (:func:`relay_lines`), until its EOF."""
        try:
            await relay_lines(worker, stderr)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # the boundary of one worker's log relay
            fault(self.faults, f"worker {worker.number}'s log relay", exc)
            await self._stop(worker)  # (its stderr unread, it could block on it)
        finally:
            done.set()

    async def _tell_to_drain(self, worker: WorkerProcess) -> None:
        """Ask one worker to drain; kill it if it has not exited after the deadline."""
        with contextlib.suppress(ClientError, ControlError):
            await worker.ask("drain")  # if not serving yet, the handshake tells it
        process = worker.process
        if process is None:
            return
        with trio.move_on_at(self._drain_deadline + EXIT_GRACE):
            await process.wait()
            return
        log.error(
            "worker %d (pid %d) still runs %gs after the drain deadline; killing it",
            worker.number,
            process.pid,
            EXIT_GRACE,
        )
        process.kill()

    def _is_report(self, worker: WorkerProcess, report: Any) -> bool:
        """Whether a worker's ``stats`` reply is one (its counters add up): the boundary
        of its pipe, where one that is not is an internal error, logged and counted."""
        try:
            add_report(Stats(), report)
        except Exception as exc:
            fault(self.faults, f"worker {worker.number}'s stats {report!r:.200}", exc)
            return False
        return True

    async def _poll(self) -> None:
        """Gather the workers' counters every ``POLL_INTERVAL`` (for SIGUSR1 and systemd)."""
        while True:
            await self.gather()
            await trio.sleep(POLL_INTERVAL)

    async def gather(self) -> list[tuple[WorkerProcess, dict[str, Any] | None]]:
        """Ask every serving worker for its stats at once; sum them into ``self.stats``."""
        answers: dict[int, dict[str, Any] | None] = {}

        async def ask(worker: WorkerProcess) -> None:
            answers[worker.number] = None
            try:
                report = await worker.ask("stats")
            except (ClientError, ControlError):
                return
            if self._is_report(worker, report):
                answers[worker.number] = worker.stats = report

        async with trio.open_nursery() as nursery:
            for worker in self._workers:
                nursery.start_soon(ask, worker)
        total = Stats()
        # Every worker's latest report (the last one it gave, if it does not answer
        # now), and those of workers that have ended: totals never go backwards.
        latest = [worker.stats for worker in self._workers if worker.stats is not None]
        for report in latest:
            total.connections_active += report["connections"]["open"]
        for report in [*latest, *self._retired]:
            add_report(total, report)
        total.internal_errors += self.faults.internal_errors
        self.stats = total
        self._open = total.connections_active
        return [(worker, answers.get(worker.number)) for worker in self._workers]

    # -- the control socket -------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """The ``stats`` reply: the workers' counters summed, and each worker."""
        gathered = await self.gather()
        stats = self.stats
        config = self.config
        answers = [answer for _, answer in gathered if answer is not None]
        drain = None
        if self._draining:
            drain = {
                "remaining": stats.connections_active,
                "drained": sum((a["drain"] or {}).get("drained", 0) for a in answers),
                "aborted": sum((a["drain"] or {}).get("aborted", 0) for a in answers),
                "deadline_in": max(0.0, self._drain_deadline - trio.current_time()),
                "forced": self._forced,
            }
        report = stats_report(
            config,
            stats,
            started=self._started,
            started_wall=self._started_wall,
            draining=self._draining,
            readiness=answers[0]["readiness"] if answers else "?",
            scans=answers[0].get("scans", "?") if answers else "?",
            listeners=self._listeners,
            control=self._control,
            buffered=sum(a["buffered"] for a in answers),
            drain=drain,
        )
        report["upgrade"] = self.upgrading
        report["workers"] = [worker.row(answer) for worker, answer in gathered]
        return report

    async def connection_snapshots(self) -> list[dict[str, Any]]:
        """The ``connections`` reply: every worker's, each with its worker and pid."""
        rows: list[dict[str, Any]] = []

        async def ask(worker: WorkerProcess) -> None:
            try:
                answer = await worker.ask("connections")
            except (ClientError, ControlError):
                return
            rows.extend({**row, "worker": worker.number, "pid": worker.pid} for row in answer)

        async with trio.open_nursery() as nursery:
            for worker in self._workers:
                nursery.start_soon(ask, worker)
        return sorted(rows, key=lambda row: (row["worker"], row["id"]))

    def control_commands(self) -> Commands:
        commands = Commands(self.faults)

        async def stats(args: dict[str, Any]) -> dict[str, Any]:
            no_arguments(args)
            return await self.snapshot()

        async def connections(args: dict[str, Any]) -> list[dict[str, Any]]:
            no_arguments(args)
            return await self.connection_snapshots()

        async def drain(args: dict[str, Any]) -> dict[str, Any]:
            no_arguments(args)
            already = self._draining
            await self.gather()
            if not already:
                log.info("drain requested on the control socket")  # the drain logs the rest
                self.drain()
            return {"draining": self.stats.connections_active, "already": already}

        async def forward(level: str) -> None:
            async with trio.open_nursery() as nursery:
                for worker in self._workers:
                    nursery.start_soon(worker.set_level, level)

        commands.add("stats", stats, "stats", "every worker's counters, summed, and each worker")
        commands.add("connections", connections, "connections", "every open connection")
        commands.add("drain", drain, "drain", "drain every worker (as SIGTERM does)")
        commands.add(
            "log-level",
            log_level_command("on the control socket", also=forward),
            "log-level LEVEL",
            f"log detail: {', '.join(LOG_LEVELS)}",
        )
        return commands
