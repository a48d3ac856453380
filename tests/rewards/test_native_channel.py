"""What a program in another language may write on its result channel (`_protocol.NativeChannel`)."""

import math

import pytest

from rewards.sandbox import wire
from rewards.sandbox._protocol import NativeChannel, Violation

ARMED = wire.frame({"t": "armed"})


def _line(obj) -> bytes:
    return wire.dumps(obj) + b"\n"


# (mode, chunks after "armed", event kinds of the last chunk, or Violation)
RECORDS = [
    ("call", [_line({"seq": 0, "ok": 3})], ["answer"]),  # the first call's answer
    ("call", [_line({"seq": 0, "ok": 3}) + _line({"seq": 1, "ok": 0})], ["answer", "answer"]),  # two in one read
    ("call", [b'{"seq": 0, ', b'"ok": 3}\n'], ["answer"]),  # a record split across reads
    ("call", [b'{"seq": 0, "ok": 3}'], []),  # no newline yet: nothing
    ("call", [_line({"seq": 1, "ok": 0})], Violation),  # call 1 before call 0
    ("call", [_line({"seq": 0, "ok": 3}) + _line({"seq": 0, "ok": 3})], Violation),  # twice the same call
    ("call", [_line({"seq": 0, "ok": 3}), _line({"seq": 1, "ok": 0}), _line({"seq": 2, "ok": 0})], Violation),
    ("call", [_line({"seq": 0, "ok": 3, "passed": True})], Violation),  # extra fields
    ("call", [_line({"seq": "0", "ok": 3})], Violation),  # not an int
    ("call", [b'{"seq": 0, "ok": NaN}\n'], Violation),  # JSON's NaN literal: not plain data
    ("call", [_line({"seq": 0, "ok": {"__float__": "nan"}})], ["answer"]),  # tagged NaN is
    ("call", [b"PASSED\n"], Violation),  # a marker
    ("call", [b"[1, 2]\n"], Violation),  # not an object
    ("call", [_line({"seq": 0, "exc": "Panic", "detail": "index out of bounds"})], ["answer"]),
    ("call", [_line({"seq": 0, "exc": "std::bad_alloc"})], Violation),  # exception names are identifiers
    ("call", [_line({"seq": 0, "exc": "E", "detail": 5})], Violation),
    ("call", [_line({"seq": 0})], Violation),  # neither answer nor exception
    ("call", [b"x" * (1 << 21)], Violation),  # a line longer than any answer may be
    ("stdio", [b"{}\n"], Violation),  # stdio programs have no result channel
    ("compile", [wire.frame({"t": "compiled", "status": [0], "files": {"prog": "AA=="}})], ["compiled"]),
    ("compile", [wire.frame({"t": "compiled", "status": [0], "files": {"prog": 5}})], Violation),
    ("compile", [wire.frame({"t": "compiled", "status": "0", "files": {}})], Violation),
    ("compile", [wire.frame({"t": "loaded", "names": []})], Violation),
    ("compile", [wire.frame({"t": "compiled", "status": [0], "files": {}}) + b"more"], Violation),
]


@pytest.mark.parametrize("mode,chunks,last", RECORDS)
def test_native_result_channel(mode, chunks, last):
    channel = NativeChannel(mode, 2)
    assert channel.feed(ARMED) == [("armed",)]
    for chunk in chunks[:-1]:
        channel.feed(chunk)
    if last is Violation:
        with pytest.raises(Violation):
            channel.feed(chunks[-1])
    else:
        assert [e[0] for e in channel.feed(chunks[-1])] == last


def test_before_armed_only_our_frames():
    assert NativeChannel("call", 1).feed(wire.frame({"t": "setup_error", "detail": "x"}))[0][0] == "setup_error"
    with pytest.raises(Violation):
        NativeChannel("call", 1).feed(_line({"seq": 0, "ok": 3}))  # a record where "armed" must be: a bogus header
    with pytest.raises(Violation):
        NativeChannel("call", 1).feed(wire.frame({"t": "compiled", "status": [0], "files": {}}))
    assert NativeChannel("call", 1).feed(ARMED[:3]) == []  # half a frame: wait


def test_armed_and_first_record_in_one_read():
    channel = NativeChannel("call", 1)
    events = channel.feed(ARMED + _line({"seq": 0, "ok": [1.5, "a", None]}))
    assert events == [("armed",), ("answer", 0, {"ok": [1.5, "a", None]})]
    assert math.isclose(events[1][2]["ok"][0], 1.5)


LIM = {"timeout": 30, "memory_mb": 2048, "output_bytes": 1024}
# (how the compile process ended, its "compiled" frame, the outcome's category and the start of its detail)
COMPILES = [
    ("ok", {"status": [0, 0], "files": {"prog": "AA=="}}, "ok", ""),
    ("ok", {"status": [0, 256], "files": {}}, "compile_error", "compile step 2 failed (exit status 1)"),
    ("ok", {"status": [9], "files": {}}, "compile_error", "compile step 1 failed (signal 9)"),
    ("ok", {"status": [0], "files": {}}, "compile_error", "the compiler produced none"),  # prog was to be collected
    ("ok", {"status": [0], "files": {"__too_large__": ""}}, "compile_error", "the compiled program is larger"),
    ("timeout", None, "compile_error", "compiler timeout"),  # not cached (rewards.sandbox.native)
    ("memory", None, "compile_error", "the compiler ran out"),
    ("output_limit", None, "compile_error", "the compiler wrote more"),
    ("protocol_violation", None, "compile_error", "the compiler did not finish"),
    ("sandbox_error", None, "sandbox_error", "runner"),  # ours
]


@pytest.mark.parametrize("ended,compiled,category,detail", COMPILES)
def test_compile_outcomes(ended, compiled, category, detail):
    channel = NativeChannel("compile", 0)
    channel.feed(ARMED)
    if compiled is not None:
        channel.feed(wire.frame({"t": "compiled", **compiled}))
    got = channel.compile_outcome(ended, "runner lost", LIM, collects=True)
    assert got[0] == category and got[1].startswith(detail) and (got[2] is not None) == (category == "ok")


def test_trusted_frames_carry_raw_blobs():
    """Jobs carry compiled programs as raw bytes after their frame (the sandbox's own channels only)."""
    data = wire.frame_blobs({"op": "run", "files": ["prog", "x"]}, [b"\x7fELF" * 1000, b""]) + wire.frame({"n": 2})
    reader = wire.TrustedReader()
    got = [m for i in range(0, len(data), 7) for m in reader.feed(data[i:i + 7])]  # any split
    assert got[0][wire.BLOB_DATA] == [b"\x7fELF" * 1000, b""] and got[1] == {"n": 2}
    assert wire.TrustedReader().feed(wire.reframe(got[0]))[0][wire.BLOB_DATA] == got[0][wire.BLOB_DATA]
    lying = wire.frame({"op": "run", wire.BLOBS: [5]}) + wire.frame({"x": 1})  # the next frame is not 5 bytes
    with pytest.raises(wire.Malformed, match="announced"):
        wire.TrustedReader().feed(lying)
    # a program's channel never reads blobs: to it such a frame is one more frame it may not send
    assert wire.FrameReader().feed(wire.frame({wire.BLOBS: [1]}))[0] == {wire.BLOBS: [1]}
