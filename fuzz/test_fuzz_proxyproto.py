"""Fuzz the PROXY protocol parser: a long hypothesis run, kept out of the default suite.

    FUZZ_EXAMPLES=20000 .venv/bin/pytest fuzz -q -p no:cacheprovider

Properties, each for FUZZ_EXAMPLES examples (default 3000):

- bounded and total: on arbitrary bytes fed in arbitrary reads, ``parse`` of what has
  come so far answers "need more", a header no longer than what came, or
  :class:`ProxyHeaderError`: never another exception, never a header past the bound;
  once it has answered, more bytes do not change its answer (a prefix decides);
- mutation: a valid header with bytes changed, cut or inserted gives the same.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triodaemon._proxyproto import (
    V1_MAX,
    V1_PREFIX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    parse,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMIT = 512


def answer(data: bytes) -> ProxyHeader | str | None:
    try:
        return parse(data, max_size=LIMIT)
    except ProxyHeaderError as exc:
        return exc.kind


def outcome(data: bytes, cuts: list[int]) -> ProxyHeader | str | None:
    """Feed ``data`` in reads ending at ``cuts``: the first answer that is not "need
    more", checked to hold for everything that came after it."""
    seen = b""
    decided: ProxyHeader | str | None = None
    for end in [*sorted(set(cuts)), len(data)]:
        seen = data[:end]
        now = answer(seen)
        if decided is not None:
            assert now == decided, (seen, now, decided)
        elif now is not None:
            decided = now
        if isinstance(now, ProxyHeader):
            assert now.size <= min(len(seen), LIMIT)
    return decided


# Bytes that look like the start of a header often enough to get past the signatures.
starts = st.sampled_from([b"", V1_PREFIX, V2_SIGNATURE, V2_SIGNATURE + b"\x21", b"PROXY TCP4 "])


@FUZZ
@given(start=starts, rest=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600)))
def test_any_bytes_in_any_reads(start: bytes, rest: bytes, cuts: list[int]) -> None:
    data = start + rest
    decided = outcome(data, [cut for cut in cuts if cut <= len(data)])
    if decided is None:
        # Still waiting: only a valid beginning of a header within the bound.
        assert len(data) < LIMIT
        assert len(data) < V1_MAX or data.startswith(V2_SIGNATURE)


headers = st.one_of(
    st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)).map(encode_v1),
    st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)).map(
        lambda source: encode_v2(source, checksum=True)
    ),
    st.just(encode_v2(None, local=True)),
    st.just(encode_v1(None)),
)


@FUZZ
@given(
    header=headers,
    edits=st.lists(
        st.tuples(
            st.sampled_from(["set", "cut", "insert"]), st.integers(0, 200), st.binary(max_size=3)
        ),
        max_size=4,
    ),
    after=st.binary(max_size=32),
    cuts=st.lists(st.integers(0, 300)),
)
def test_valid_headers_mutated(
    header: bytes, edits: list[tuple[str, int, bytes]], after: bytes, cuts: list[int]
) -> None:
    data = bytearray(header)
    for op, position, value in edits:
        at = position % (len(data) + 1)
        if op == "set" and at < len(data):
            data[at : at + 1] = value[:1] or b"\0"
        elif op == "cut":
            del data[at : at + len(value) + 1]
        else:
            data[at:at] = value
    stream = bytes(data) + after
    outcome(stream, [cut for cut in cuts if cut <= len(stream)])
    if not edits:
        assert isinstance(answer(stream), ProxyHeader)
