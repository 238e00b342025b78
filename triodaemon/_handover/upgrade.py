"""Upgrades: the daemon starts a new copy of itself, which takes everything over.

Strategy: on SIGHUP or ``ctl upgrade`` the running daemon makes a socketpair
and starts triodaemon's installed entry point with this interpreter, its own
arguments (the program on disk may be newer) and a hidden ``--handover-fd``:
the new process's end of the pair. Over it the new process asks for the sockets as ``--takeover`` would
over the control socket, and the giver (:mod:`.giver`) does the rest. The new process
inherits stdout and stderr (its log lines go where ours went) and, under
systemd, the notify socket and watchdog, which it uses once it is the
service's main process (the giver tells systemd so: see ``Giver.notify``).

Failure is safe. Until the new process is ready nothing here changes; if it
exits, is not ready within ``upgrade_timeout``, or breaks the protocol, it is
told to stop and then killed (it is ours), the reason is logged and returned
(the control reply says it), and the daemon serves on as if nothing happened.
A drain that begins before the new process is ready calls the upgrade off.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from .._control import Commands, ControlError, serve_control_stream
from .._program import exit_reason, python_program, without_options
from .._systemd import Notifier
from .giver import Giver, Handing
from .wire import HandoverError

log = logging.getLogger("triodaemon")

#: After a failed upgrade, how long the new process may take to exit once told to
#: (SIGTERM), and then once killed.
_REAP_TIMEOUT = 5.0


class Upgrader:
    """Starts a new copy of this process (with ``argv``, the command line's
    arguments) and hands everything over to it through ``giver``.

    :meth:`upgrade` is what SIGHUP and ``ctl upgrade`` call.
    """

    def __init__(self, giver: Giver, argv: Sequence[str], notifier: Notifier) -> None:
        self.giver = giver
        # (Not the handover of this process's own start: the next one gets its own.)
        self.argv = without_options(argv)
        self.notifier = notifier

    async def upgrade(self, who: str) -> dict[str, Any]:
        """Upgrade, for ``who`` (``SIGHUP``, ``ctl upgrade``); return the outcome.

        Raises:
            ControlError: refused (a drain or another upgrade under way) or failed:
                the message says why, and that this daemon serves on.
        """
        try:
            handing = self.giver.begin(who)
        except HandoverError as exc:
            log.warning("upgrade (%s) refused: %s", who, exc)
            raise ControlError(str(exc)) from None
        log.info("upgrade (%s): starting a new process to take over", who)
        try:
            await self._run(handing)
        finally:
            if handing.given is None:
                self.giver.end(handing, "cancelled")
        given = handing.given
        if given is None:
            raise ControlError(f"upgrade failed: {handing.failure}; pid {os.getpid()} serves on")
        return {
            "pid": given.pid,
            "old_pid": os.getpid(),
            "listeners": given.listeners,
            "handed_over": given.handed,
            "finishing": given.left,
            "workers": given.workers,
            "migrate": given.migrate,
        }

    async def _run(self, handing: Handing) -> None:
        """Start the new process and serve its takeover; kill it if that fails."""
        giver = self.giver
        try:
            mine, theirs = socket.socketpair()
        except OSError as exc:
            giver.end(handing, f"cannot make a channel: {exc.strerror or exc}")
            log.error("upgrade (%s) failed: %s", handing.who, handing.failure)
            return
        command = [*python_program(), *self.argv, "--handover-fd", str(theirs.fileno())]
        try:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=self._environment(),
            )
        except OSError as exc:
            mine.close()
            giver.end(handing, f"cannot start {command[0]}: {exc.strerror or exc}")
            log.error("upgrade (%s) failed: %s", handing.who, handing.failure)
            return
        finally:
            theirs.close()
        log.info("upgrade (%s): pid %d started", handing.who, process.pid)

        async def kill() -> bool:
            """End the new process (stalled): whether it is gone."""
            log.error("upgrade (%s): pid %d stalled; killing it", handing.who, process.pid)
            process.kill()
            with trio.move_on_after(_REAP_TIMEOUT):
                await process.wait()
            return process.returncode is not None

        handing.kill = kill
        handing.taker = process.pid
        commands = Commands(giver.faults)
        commands.add("takeover", giver.takeover_command(handing), "takeover", "take over")
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(mine))
        try:
            # The whole takeover (asking, readiness, the connections) is served here;
            # it returns early only if the new process never asked.
            wait = max(0.0, handing.ready_by - trio.current_time())
            await giver.unless_a_drain(
                handing, partial(serve_control_stream, stream, commands, idle_timeout=wait)
            )
            if not handing.finished.is_set():
                why = await self._why_not(process, handing)
                giver.end(handing, why)
                log.error(
                    "upgrade (%s) called off: %s; %s",
                    handing.who,
                    why,
                    "draining" if giver.host.draining else "serving on",
                )
        finally:
            if handing.given is None:
                with trio.CancelScope(shield=True):
                    await self._end(process, handing)

    async def _why_not(self, process: trio.Process, handing: Handing) -> str:
        """Why the new process never took over, when it did not even ask."""
        if self.giver.host.draining:
            return "a drain began"
        if trio.current_time() >= handing.ready_by:
            return (
                f"the new process (pid {process.pid}) did not ask for the sockets within "
                f"{self.giver.upgrade_timeout:g}s"
            )
        with trio.move_on_after(0.5):  # it has closed its end: say how it ended
            await process.wait()
        how = exit_reason(process.returncode) if process.returncode is not None else None
        return f"the new process (pid {process.pid}) {how or 'closed its channel'}"

    @staticmethod
    async def _end(process: trio.Process, handing: Handing) -> None:
        """The upgrade failed: the new process exits (it is told to, or killed)."""
        if process.returncode is None:
            with trio.move_on_after(0.5):  # (a failure of its own: it is exiting)
                await process.wait()
        if process.returncode is not None:
            if handing.failure is not None and "exited" not in handing.failure:
                handing.failure += f" (it {exit_reason(process.returncode)})"
            return
        # Asked first: a new supervisor stops its workers as it exits (a kill would
        # leave them behind); killed if it does not.
        process.terminate()
        with trio.move_on_after(_REAP_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(_REAP_TIMEOUT):
                await process.wait()

    def _environment(self) -> dict[str, str]:
        """Ours, with what systemd gave us that we took out of it (the new process
        takes systemd's notify socket and watchdog over too)."""
        env = dict(os.environ)
        if self.notifier.address:
            env["NOTIFY_SOCKET"] = self.notifier.address
        if self.notifier.watchdog is not None and math.isfinite(self.notifier.watchdog):
            env["WATCHDOG_USEC"] = str(int(self.notifier.watchdog * 1e6))
        return env
