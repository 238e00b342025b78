"""What the client commands share: their output, and Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._errors import ClientError
from .._process.logs import error_line


def stdout_failed(exc: OSError) -> ClientError:
    """Standard output failed: like ``| head``, the reader is gone, or the disk is
    full. Silence the interpreter's own flush at exit; the error is one line."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(exc, BrokenPipeError):
        return ClientError("standard output was closed")
    return ClientError(f"cannot write to standard output: {exc.strerror or exc}")


def print_out(text: str) -> int:
    """Print ``text`` on stdout: 0, or the exit code after one line saying why not."""
    try:
        print(text, flush=True)
    except OSError as exc:
        return error_line(str(stdout_failed(exc)))
    return 0


def only_interrupts(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``KeyboardInterrupt``, or a group (from a nursery) of nothing else."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    inner = getattr(exc, "exceptions", None)  # BaseExceptionGroup, without naming it on 3.10
    return isinstance(inner, tuple) and bool(inner) and all(map(only_interrupts, inner))


async def interruptible(command: Callable[..., Awaitable[int]], *args: Any) -> int:
    """Run a client command; Ctrl-C cancels it and raises ``KeyboardInterrupt`` here.

    Left to trio, the interrupt is raised wherever the program happens to be,
    between creating a coroutine and awaiting it too, and the interpreter then
    warns about the coroutine at exit. Cancelling stops it at a checkpoint, with
    every ``finally`` run.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return await command(*args)  # inherited as ignored (``cmd &`` in a script): kept
    code = 0
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                nonlocal code
                code = await command(*args)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            async for _ in interrupts:
                nursery.cancel_scope.cancel()
                raise KeyboardInterrupt
    return code


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)
