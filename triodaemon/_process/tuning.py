"""What a serving process sets up for itself before it serves: its open-file
limit, and (glibc) where large buffers come from."""

from __future__ import annotations

import logging
import resource
import sys

log = logging.getLogger("triodaemon")


def raise_fd_limit(wanted: int) -> None:
    """Raise the soft open-file limit toward the hard one, as much as ``wanted`` needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.debug("raised the open-file limit from %d to %d", soft, target)
    elif soft < wanted:
        log.warning("open-file limit is %d; --max-connections may not be reachable", soft)


#: glibc's mallopt parameters, and the values the daemon sets (see below).
_M_TRIM_THRESHOLD = -1


_M_MMAP_THRESHOLD = -3


#: Buffers up to this size come from the heap: a receive (256 KiB) plus a
#: partial frame of the default 1 MiB limit fits with room to spare.
MALLOC_MMAP_THRESHOLD = 4 * 1024 * 1024


def keep_large_buffers_on_the_heap() -> None:
    """glibc only: serve buffers up to 4 MiB from the heap instead of an mmap each.

    A decoder's buffer holds a read and a partial frame (hundreds of KiB on bulk
    transfer) and grows and shrinks with every read. Above glibc's mmap
    threshold (128 KiB until a large block is freed, and then whatever size
    that block had) each of those resizes is an ``mremap`` system call. Whether
    the threshold adapts depends on which buffer happens to be freed first:
    S4 of bench/run.py over TCP ran at 38k or 71k frames per CPU-second
    depending on it. A fixed threshold (with the trim threshold at twice it,
    as glibc's own adaptation does) makes it the fast case every time. Other C
    libraries keep their own policy; a failure here changes nothing else.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, 2 * MALLOC_MMAP_THRESHOLD)
