# The compiled code of triodaemon/_lowlevel/_speedups.c (optional; see scans.py and sockets.py).

def count_byte(data: bytes | bytearray, byte: int, start: int, end: int, /) -> int: ...
def walk_lengths(
    data: bytes | bytearray,
    start: int,
    end: int,
    n: int,
    big: int,
    skip: int,
    limit: int,
    most: int,
    /,
) -> tuple[int, int, int]: ...
def whole_frames(
    data: bytes | bytearray, start: int, end: int, shape: tuple[int, int, int, int, int], /
) -> int: ...
def recv_echo(
    fd: int, buf: bytearray, size: int, shape: tuple[int, int, int, int, int], /
) -> tuple[int, int, int] | None: ...
