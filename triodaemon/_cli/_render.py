"""``triodaemon ctl``'s tables: the control protocol's replies, for people.

Pure functions from a reply's ``result`` (see :mod:`triodaemon._control`) to
text; the command around them is :mod:`.ctl`.
"""

from __future__ import annotations

from typing import Any

from .._errors import printable


def size(count: float | None) -> str:
    """``1.5 MiB``: bytes in the largest binary unit that keeps the number above 1."""
    if count is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """``1h02m03s``, ``4m05s``, ``7.2s``; ``none`` for no limit (``None``, from inf)."""
    if seconds is None:
        return "none"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _limit(seconds: float) -> str:
    return f"{seconds:g}s" if seconds else "off"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def render_stats(stats: dict[str, Any], rates: dict[str, float] | None = None) -> str:
    """The ``stats`` reply as labelled lines; ``rates`` (per second, from two
    replies) adds frames/s and bytes/s to their lines."""
    connections = stats["connections"]
    limits = stats["limits"]
    errors = stats["errors"]
    frames = f"{stats['frames']:,}"
    traffic = f"in {size(stats['bytes_in'])}, out {size(stats['bytes_out'])}"
    if rates is not None:
        frames += f"  ({rates['frames']:,.0f}/s)"
        traffic += f"  ({size(rates['bytes_in'])}/s in, {size(rates['bytes_out'])}/s out)"
    max_buffered = limits["max_buffered"]
    rows = [
        (
            "triodaemon",
            f"{stats['version']}, pid {stats['pid']}, up {duration(stats['uptime'])}, "
            f"{stats['state']} ({stats['readiness']}, {_scans(stats.get('speedups'))})",
        ),
        ("listeners", ", ".join(item["address"] for item in stats["listeners"]) or "none"),
        (
            "connections",
            f"{connections['open']:,} open, {connections['total']:,} in all"
            + _handovers(connections),
        ),
        ("frames", frames),
        ("bytes", traffic),
        (
            "buffered",
            f"{size(stats['buffered'])} in partial frames"
            + (f" (limit {size(max_buffered)})" if max_buffered else "")
            + f"; {_plural(stats['memory_waits'], 'wait')} for buffer room",
        ),
        ("errors", ", ".join(f"{count:,} {kind}" for kind, count in errors.items())),
        (
            "limits",
            f"{limits['framing']}; "
            f"{limits['max_connections']:,} connections; idle {_limit(limits['idle_timeout'])}, "
            f"frame {_limit(limits['frame_timeout'])}, drain {_limit(limits['drain_timeout'])}"
            + (
                f"; PROXY header required, within {_limit(limits['proxy_timeout'])}"
                if limits.get("proxy_timeout") is not None
                else ""
            ),
        ),
    ]
    if stats.get("upgrade"):
        rows.append(("upgrade", f"under way ({stats['upgrade']})"))
    drain = stats.get("drain")
    if drain is not None:
        rows.append(
            (
                "drain",
                f"{_plural(drain['remaining'], 'connection')} left, {drain['drained']:,} drained, "
                f"{drain['aborted']:,} aborted; deadline in {duration(drain['deadline_in'])}"
                + (" (forced)" if drain["forced"] else ""),
            )
        )
    for worker in stats.get("workers", ()):
        rows.append(
            (
                f"worker {worker['worker']}",
                f"pid {worker['pid']}, {worker['state']}, up {duration(worker['uptime'])}, "
                f"{_plural(worker['connections'], 'connection')}, {worker['frames']:,} frames, "
                f"{_plural(worker['restarts'], 'restart')}",
            )
        )
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _scans(speedups: bool | None) -> str:
    """What scans the decoders, for the first line (a daemon of an older release: ``?``)."""
    if speedups is None:
        return "scans ?"
    return "compiled scans" if speedups else "pure-Python scans"


def _handovers(connections: dict[str, Any]) -> str:
    """``; 3 taken over, 0 handed over``, when an upgrade moved any (else nothing)."""
    taken, handed = connections.get("taken_over", 0), connections.get("handed_over", 0)
    return f"; {taken:,} taken over, {handed:,} handed over" if taken or handed else ""


_COLUMNS = ("id", "peer", "listener", "age", "in", "out", "frames", "state")


def render_connections(connections: list[dict[str, Any]]) -> str:
    """The ``connections`` reply as a table, one row per connection (from a
    supervisor, with each one's worker and its pid: ids are per worker)."""
    if not connections:
        return "no open connections"
    workers = "worker" in connections[0]
    columns = ("worker", "pid", *_COLUMNS) if workers else _COLUMNS
    rows = [
        (
            *((str(item["worker"]), str(item["pid"])) if workers else ()),
            str(item["id"]),
            # (What a peer named itself, a PROXY header's Unix path, say: escaped.)
            printable(item["peer"] + (f" via {item['proxy']}" if item.get("proxy") else "")),
            printable(item["listener"]),
            duration(item["age"]),
            size(item["bytes_in"]),
            size(item["bytes_out"]),
            f"{item['frames']:,}",
            item["state"],
        )
        for item in connections
    ]
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    shift = 2 if workers else 0
    numeric = {i + shift for i in (0, 3, 4, 5, 6)} | ({0, 1} if workers else set())

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(line(row) for row in [columns, *rows])


def render_reply(command: str, result: Any) -> str:
    """Any command's reply, readable."""
    if command == "stats":
        return render_stats(result)
    if command == "connections":
        return render_connections(result)
    if command == "drain":
        count = _plural(result["draining"], "connection")
        return f"already draining: {count} left" if result["already"] else f"draining {count}"
    if command == "log-level":
        return f"log level {result['level']} (was {result['was']})"
    if command == "upgrade" and result.get("workers"):
        how = (
            "hand their connections over to the new ones"
            if result.get("migrate", True)
            else "finish their connections (--no-migrate)"
        )
        return (
            f"upgraded: pid {result['pid']} serves now, with {_plural(result['listeners'], 'listener')};"
            f" the {_plural(result['workers'], 'worker')} of pid {result['old_pid']} {how}, then exit"
        )
    if command == "upgrade":
        return (
            f"upgraded: pid {result['pid']} serves now, with {_plural(result['listeners'], 'listener')}"
            f" and {_plural(result['handed_over'], 'connection')} handed over; pid "
            f"{result['old_pid']} exits once {_plural(result['finishing'], 'connection')} "
            f"{'finishes' if result['finishing'] == 1 else 'finish'}"
        )
    if command == "help":
        width = max(len(usage) for usage in result)
        return "\n".join(f"{usage:<{width}}  {summary}" for usage, summary in result.items())
    raise AssertionError(f"no table for {command!r}")


def rates(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float] | None:
    """Per-second rates of frames and bytes between two ``stats`` replies."""
    elapsed = after["uptime"] - before["uptime"]
    if elapsed <= 0:
        return None
    return {
        key: (after[key] - before[key]) / elapsed for key in ("frames", "bytes_in", "bytes_out")
    }
