"""The benchmark suite: triodaemon and its peers side by side, in one run, as ratios.

    python bench/run.py                 # everything, ~14 minutes (see --help for a subset)
    python bench/run.py --quick         # seconds: checks the harness works
    python bench/run.py --baseline DIR  # also "triodaemon@base": the checkout in DIR

For each scenario, transport and round, every server is started pinned to CPU 0
(taskset), loaded by bench/loadgen (C, built here with cc) pinned to CPU 1, and
measured: frames echoed per second, frames per second of *server* CPU (the fair
figure: the generator may saturate its own core first), latency percentiles, and
the generator's own CPU use. Servers run in interleaved order (A B C A B C) and the
median of the rounds is reported, each as a ratio to triodaemon in the same run.
S5 also holds --idle connections open (each after one round trip) and reports the
server's resident memory per idle connection (VmRSS with them, minus before them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
PEERS = HERE / "peers"
BUILD = HERE / ".build"

#: S5's idle connections (--idle changes it).
IDLE = 10_000

#: The server that runs the triodaemon of another checkout (--baseline DIR), to
#: measure a change against the code before it in one run.
BASELINE = "triodaemon@base"

# name: (load generator arguments, description, framing)
SCENARIOS = {
    "s1": (
        ["--conns", "1", "--depth", "1", "--size", "64"],
        "latency: 1 conn, 1 in flight, 64 B line",
        "line",
    ),
    "s2": (
        ["--conns", "50", "--depth", "16", "--size", "64"],
        "50 conns x 16 in flight, 64 B line",
        "line",
    ),
    "s3": (
        ["--conns", "50", "--depth", "16", "--size", "64"],
        "50 conns x 16 in flight, 64 B length",
        "length",
    ),
    "s4": (
        ["--conns", "4", "--depth", "4", "--size", "65540"],
        "bulk: 4 conns x 4 in flight, 64 KiB length",
        "length",
    ),
    "s5": (
        ["--conns", "1", "--depth", "1", "--size", "64"],  # and --idle N --pause
        "scale: idle conns held open, latency of 1 active, 64 B line",
        "line",
    ),
}


def files_needed(idle: int) -> int:
    """The open-file limit S5 needs with ``idle`` connections (both ends inherit it)."""
    return idle + 200


def server_command(name: str, framing: str, where: list[str], idle: int) -> list[str]:
    """The command line of server ``name`` listening at ``where`` (--tcp PORT | --unix PATH)."""
    py = sys.executable
    workers = WORKERS.get(name)
    if workers is not None:
        return [*server_command("triodaemon", framing, where, idle), "--workers", str(workers)]
    if name in ("triodaemon", BASELINE):
        kind, value = where
        address = ["--tcp", f"127.0.0.1:{value}"] if kind == "--tcp" else ["--sock", value]
        return [
            py,
            "-m",
            "triodaemon",
            *address,
            "--framing",
            framing,
            "--log-level",
            "warning",
            "--max-frame",
            "1MiB",
            "--idle-timeout",
            "0",
            "--max-connections",
            str(files_needed(idle)),
        ]
    if name == "go-bufio":
        return [str(BUILD / "go-bufio"), *where, "--framing", framing]
    peer, _, loop = name.partition("+")
    script = {
        "asyncio-streams": "asyncio_streams.py",
        "asyncio-protocol": "asyncio_protocol.py",
        "trio-tutorial": "trio_tutorial.py",
        "trio-floor": "trio_floor.py",
        "twisted": "twisted_receiver.py",
    }[peer]
    extra = ["--loop", loop] if loop else []
    return [py, str(PEERS / script), *where, "--framing", framing, *extra]


#: triodaemon with N worker processes (``--workers N``), with the CPU of the
#: supervisor and its workers together: not in the default set (their figures say
#: what the machine has, not how triodaemon compares). ``-1w`` and ``-2w`` run
#: unpinned, server and loadgen sharing every core (``-1w`` is the single process,
#: for reference); ``-2w-one-core`` pins the supervisor and both workers to the
#: server's core, which measures what workers cost per CPU-second, apart from
#: competing with the load generator for cores.
WORKERS = {"triodaemon-1w": 1, "triodaemon-2w": 2, "triodaemon-2w-one-core": 2}
UNPINNED = {"triodaemon-1w", "triodaemon-2w"}

#: Not peers, and not in the default set: ``trio-floor`` (bench/peers/trio_floor.py)
#: echoes bytes with the least a trio task per connection can do, a floor for any
#: trio server.
FLOORS = ["trio-floor"]

ALL_SERVERS = [
    "triodaemon",
    "trio-tutorial",
    "asyncio-streams",
    "asyncio-protocol",
    "asyncio-streams+uvloop",
    "asyncio-protocol+uvloop",
    "twisted",
    "go-bufio",
]

# What each server needs beyond the test extra, and how to get it.
NEEDS = {
    "asyncio-streams+uvloop": ("uvloop", "pip install -e '.[bench]'"),
    "asyncio-protocol+uvloop": ("uvloop", "pip install -e '.[bench]'"),
    "twisted": ("twisted", "pip install -e '.[bench]'"),
}


def stale(binary: Path, source: Path) -> bool:
    return not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime


def build_loadgen() -> Path:
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "loadgen"
    source = HERE / "loadgen.c"
    if stale(binary, source):
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            sys.exit("bench: no C compiler (cc) found; install gcc")
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def build_go_peer() -> None:
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "go-bufio"
    source = PEERS / "go_bufio.go"
    if stale(binary, source):
        go = shutil.which("go")
        if go is None:
            sys.exit(
                "bench: the go-bufio peer needs Go: apt-get install golang-go "
                "(or leave it out with --servers)"
            )
        env = {**os.environ, "GOCACHE": str(BUILD / "go-cache"), "GOFLAGS": "-trimpath"}
        subprocess.run([go, "build", "-o", str(binary), str(source)], check=True, env=env)


def check_available(servers: list[str]) -> None:
    """Exit with one line naming what is missing for any of ``servers``."""
    for server in servers:
        if server in NEEDS:
            module, how = NEEDS[server]
            if importlib.util.find_spec(module) is None:
                sys.exit(f"bench: {server} needs {module}: {how} (or leave it out with --servers)")


def pinned(cpu: int, command: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *command]
    return command


def unpinned(cpu: int, command: list[str]) -> list[str]:
    return command


def raise_file_limit(scenarios: list[str], idle: int) -> None:
    """Raise this process's open-file limit to the hard limit: servers and loadgen inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = files_needed(idle)
    if hard != resource.RLIM_INFINITY and hard < need and "s5" in scenarios:
        sys.exit(
            f"bench: S5 holds {idle:,} connections open and needs an open-file limit of at "
            f"least {need:,}; the hard limit here is {hard:,}: raise it (ulimit -Hn, "
            "limits.conf), lower --idle, or leave s5 out with --scenarios"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_ticks(pid: int) -> int:
    """CPU ticks of process ``pid`` and its children (a supervisor's workers) so far."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # itself, or ppid
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(process: subprocess.Popen[bytes], where: list[str]) -> None:
    deadline = time.monotonic() + 15
    kind, value = where
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if kind == "--tcp":
                socket.create_connection(("127.0.0.1", int(value)), timeout=1).close()
            else:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(value)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening within 15 s")


@dataclass
class Sample:
    server: str
    scenario: str
    transport: str
    frames_per_second: float
    frames_per_cpu_second: float
    p50_us: float
    p99_us: float
    p999_us: float
    server_cpu: float
    client_cpu: float
    errors: int
    first_error: str
    kib_per_idle_conn: float = float("nan")


def measure(
    loadgen: Path,
    server: str,
    scenario: str,
    transport: str,
    duration: float,
    warmup: float,
    workdir: Path,
    idle: int,
    baseline: Path | None = None,
) -> Sample:
    args, _, framing = SCENARIOS[scenario]
    pin = unpinned if server in UNPINNED else pinned
    if scenario == "s5":
        args = [*args, "--idle", str(idle), "--pause"]
    if transport == "tcp":
        where = ["--tcp", str(free_port())]
    else:  # a fresh path each time: not every peer removes its socket file on exit
        where = ["--unix", tempfile.mktemp(prefix=f"{scenario}-", suffix=".sock", dir=workdir)]
    log_path = workdir / f"{server}.log"
    with log_path.open("wb") as log:
        env = cwd = None
        if server == BASELINE:
            # python -m puts the working directory first on sys.path: run it there.
            assert baseline is not None
            env = {**os.environ, "PYTHONPATH": str(baseline)}
            cwd = baseline
        process = subprocess.Popen(
            pin(0, server_command(server, framing, where, idle)),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            cwd=cwd,
        )
    try:
        try:
            wait_ready(process, where)
        except RuntimeError as exc:
            raise RuntimeError(f"{server}: {exc}: {log_path.read_text()[-500:]}") from None
        target = ["--tcp", f"127.0.0.1:{where[1]}"] if transport == "tcp" else ["--unix", where[1]]
        generator = subprocess.Popen(
            pin(
                1,
                [
                    str(loadgen),
                    *target,
                    "--framing",
                    framing,
                    *args,
                    "--duration",
                    str(duration),
                    "--warmup",
                    str(warmup),
                ],
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        kib_per_idle_conn = float("nan")
        if scenario == "s5":
            # Memory with every idle connection open (each has done one round trip),
            # against the server's memory before any of them.
            assert generator.stdin is not None
            assert generator.stderr is not None
            before = rss_kib(process.pid)
            line = generator.stderr.readline()
            if line.strip() != b"idle ready":
                generator.wait(timeout=60)
                said = (line + generator.stderr.read()).decode().strip()
                raise RuntimeError(f"loadgen failed: {said}")
            kib_per_idle_conn = (rss_kib(process.pid) - before) / idle
            generator.stdin.write(b"go\n")
            generator.stdin.flush()
        time.sleep(warmup)
        ticks_start = cpu_ticks(process.pid)
        out, err = generator.communicate(timeout=duration + warmup + 60)
        ticks = cpu_ticks(process.pid) - ticks_start
        if generator.returncode != 0:
            raise RuntimeError(f"loadgen failed: {err.decode().strip()}")
        result = json.loads(out)
        if result["frames"] == 0 and not result["errors"]:
            # A server that never answers (wrong framing, say) is not merely slow.
            result["errors"], result["first_error"] = 1, "no echo came back at all"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    server_cpu = ticks / os.sysconf("SC_CLK_TCK")
    return Sample(
        server,
        scenario,
        transport,
        result["frames_per_second"],
        result["frames"] / server_cpu if server_cpu else float("nan"),
        result["p50_us"],
        result["p99_us"],
        result["p999_us"],
        server_cpu / result["seconds"],
        result["client_cpu_seconds"] / result["seconds"],
        result["errors"],
        result["first_error"],
        kib_per_idle_conn,
    )


def median(samples: list[Sample], field: str) -> float:
    return float(statistics.median(float(getattr(sample, field)) for sample in samples))


def report(samples: list[Sample], servers: list[str], idle: int) -> str:
    lines = []
    keys = sorted({(s.scenario, s.transport) for s in samples})
    for scenario, transport in keys:
        group = [s for s in samples if (s.scenario, s.transport) == (scenario, transport)]
        base = [s for s in group if s.server == "triodaemon"]
        base_cpu = median(base, "frames_per_cpu_second") if base else float("nan")
        title = SCENARIOS[scenario][1].replace("idle conns", f"{idle:,} idle conns")
        lines.append(f"\n### {scenario.upper()} over {transport}: {title}\n")
        scale = scenario == "s5"
        lines.append(
            "| server | frames/s | frames per server CPU-s | vs triodaemon | p50 us | p99 us | p99.9 us | server CPU | loadgen CPU | errors |"
            + (" KiB per idle conn |" if scale else "")
        )
        lines.append(
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            + (" ---: |" if scale else "")
        )
        for server in servers:
            mine = [s for s in group if s.server == server]
            if not mine:
                continue
            per_cpu = median(mine, "frames_per_cpu_second")
            lines.append(
                f"| {server} | {median(mine, 'frames_per_second'):,.0f} | {per_cpu:,.0f} | "
                f"{per_cpu / base_cpu:.2f}x | {median(mine, 'p50_us'):.0f} | {median(mine, 'p99_us'):.0f} | "
                f"{median(mine, 'p999_us'):.0f} | {median(mine, 'server_cpu'):.0%} | "
                f"{median(mine, 'client_cpu'):.0%} | {sum(s.errors for s in mine)} |"
                + (f" {median(mine, 'kib_per_idle_conn'):.2f} |" if scale else "")
            )
    lines.append(transport_report(samples, servers))
    return "\n".join(lines)


def transport_report(samples: list[Sample], servers: list[str]) -> str:
    """Unix socket against TCP: the ratio of frames per server CPU-second, per scenario."""
    scenarios = sorted({s.scenario for s in samples})
    cells: dict[tuple[str, str], str] = {}
    for server in servers:
        for scenario in scenarios:
            by = {
                transport: [
                    s
                    for s in samples
                    if (s.server, s.scenario, s.transport) == (server, scenario, transport)
                ]
                for transport in ("tcp", "unix")
            }
            if by["tcp"] and by["unix"]:
                ratio = median(by["unix"], "frames_per_cpu_second") / median(
                    by["tcp"], "frames_per_cpu_second"
                )
                cells[server, scenario] = f"{ratio:.2f}x"
    if not cells:
        return ""
    lines = [
        "\n### Unix socket against TCP\n",
        "Frames per server CPU-second over a Unix socket divided by the same over TCP.\n",
        "| server | " + " | ".join(s.upper() for s in scenarios) + " |",
        "| --- |" + " ---: |" * len(scenarios),
    ]
    for server in servers:
        row = [cells.get((server, scenario), "") for scenario in scenarios]
        if any(row):
            lines.append(f"| {server} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(ALL_SERVERS), help="comma-separated")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated: s1,s2,s3,s4,s5"
    )
    parser.add_argument("--transports", default="tcp,unix")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument(
        "--idle", type=int, default=IDLE, help=f"S5's idle connections (default {IDLE:,})"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 0.3 s: a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write every sample to FILE")
    parser.add_argument(
        "--from-json", metavar="FILE", help="measure nothing: print the tables of a --json FILE"
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        type=Path,
        help=f"also run {BASELINE}: the triodaemon package of the checkout DIR "
        "(git worktree add DIR main), interleaved with the rest",
    )
    args = parser.parse_args()
    if args.from_json:
        saved = [Sample(**fields) for fields in json.loads(Path(args.from_json).read_text())]
        named = [
            s
            for s in [*ALL_SERVERS, BASELINE, *WORKERS, *FLOORS]
            if any(x.server == s for x in saved)
        ]
        print(report(saved, named, args.idle))
        return 0
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 0.3, 0.1
    servers = args.servers.split(",")
    unknown = [s for s in servers if s not in [*ALL_SERVERS, *WORKERS, *FLOORS]]
    if unknown:
        known = ", ".join([*ALL_SERVERS, *WORKERS, *FLOORS])
        sys.exit(f"bench: unknown server {unknown[0]}; choose from {known}")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "triodaemon" / "__main__.py").is_file():
            sys.exit(f"bench: --baseline {args.baseline} is not a triodaemon checkout")
        servers.insert(servers.index("triodaemon") + 1 if "triodaemon" in servers else 0, BASELINE)
    check_available(servers)
    raise_file_limit(args.scenarios.split(","), args.idle)
    loadgen = build_loadgen()
    if "go-bufio" in servers:
        build_go_peer()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="td-bench-") as directory:
        for scenario in args.scenarios.split(","):
            for transport in args.transports.split(","):
                for round_number in range(args.rounds):
                    for server in servers:  # interleaved: A B C, A B C, ...
                        sample = measure(
                            loadgen,
                            server,
                            scenario,
                            transport,
                            args.duration,
                            args.warmup,
                            Path(directory),
                            args.idle,
                            args.baseline,
                        )
                        samples.append(sample)
                        print(
                            f"{scenario} {transport} round {round_number + 1} {server}: "
                            f"{sample.frames_per_second:,.0f} frames/s, "
                            f"{sample.frames_per_cpu_second:,.0f} per server CPU-s, "
                            f"errors {sample.errors}",
                            file=sys.stderr,
                            flush=True,
                        )
    print(report(samples, servers, args.idle))
    if args.json:
        Path(args.json).write_text(json.dumps([s.__dict__ for s in samples], indent=2))
    return 1 if any(s.errors for s in samples) else 0


if __name__ == "__main__":
    sys.exit(main())
