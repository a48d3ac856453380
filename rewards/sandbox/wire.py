"""Plain-data wire format shared by the trusted parent and the sandboxed child (stdlib only).

Values cross process boundaries as JSON. JSON has no tuples, sets, non-string keys, bytes or
non-finite floats, so those travel in a tagged form (a one-key object):

    (1, 2)          -> {"__tuple__": [1, 2]}
    {1, 2}          -> {"__set__": [1, 2]}          frozenset -> {"__frozenset__": [...]}
    {1: "a"}        -> {"__dict__": [[1, "a"]]}    (the encoder always uses this form)
    b"ab"           -> {"__bytes__": "6162"}
    float("nan")    -> {"__float__": "nan"}         also "inf", "-inf"
    1+2j            -> {"__complex__": [1.0, 2.0]}
    10**5000        -> {"__int__": "<hex>"}         ints too long for JSON's decimal limit
    anything else   -> {"__unserialisable__": "TypeName"}  (never equal to an expected value)

The encoder checks exact types (`type(x) is int`), so a subclass with a forged `__eq__` cannot pass
as plain data. A plain JSON object without a tag decodes to a dict with string keys, which lets
dataset authors write `"expected": {"a": 1}`. This module is loaded into the sandbox runner by
source, so it imports nothing outside the standard library.
"""

import json
import math
import struct

TAGS = ("__tuple__", "__set__", "__frozenset__", "__dict__", "__bytes__", "__float__", "__complex__", "__int__",
        "__unserialisable__")
MAX_FRAME = 64 << 20
_JSON_INT_LIMIT = 10**4000  # computed once: as a literal in encode() it was recomputed for every int
_HEADER = struct.Struct(">I")


class Unserialisable:
    """Decoded stand-in for a value the child could not express as plain data; equal to nothing."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __eq__(self, other):
        return False

    __hash__ = object.__hash__

    def __repr__(self):
        return f"<unserialisable {self.type_name}>"


class NotPlain(ValueError):
    """Raised by `encode(..., strict=True)` for a value with no plain-data form; .value is that value."""

    def __init__(self, value):
        super().__init__(f"{type(value).__name__} is not plain data")
        self.value = value


def encode(value, _depth: int = 0, strict: bool = False):
    """Python value -> JSON-able tree in the tagged form above (strict types, depth-limited). Values with no plain
    form become {"__unserialisable__": type name}, or raise NotPlain if strict."""
    if _depth > 200:
        raise ValueError("value nested deeper than 200 levels")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -_JSON_INT_LIMIT < value < _JSON_INT_LIMIT else {"__int__": format(value, "x")}
    if t is float:
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if t is list:
        return [encode(v, _depth + 1, strict) for v in value]
    if t is tuple:
        return {"__tuple__": [encode(v, _depth + 1, strict) for v in value]}
    if t is set or t is frozenset:
        return {"__" + t.__name__ + "__": [encode(v, _depth + 1, strict) for v in value]}
    if t is dict:
        return {"__dict__": [[encode(k, _depth + 1, strict), encode(v, _depth + 1, strict)] for k, v in value.items()]}
    if t is bytes:
        return {"__bytes__": value.hex()}
    if t is complex:
        return {"__complex__": [encode(value.real), encode(value.imag)]}
    if strict:
        raise NotPlain(value)
    return {"__unserialisable__": t.__name__}


def _hashable(value):
    if type(value) is list:
        return tuple(_hashable(v) for v in value)
    if type(value) is dict:
        return tuple((_hashable(k), _hashable(v)) for k, v in value.items())
    if type(value) is set:
        return frozenset(_hashable(v) for v in value)
    return value


def decode(tree):
    """JSON-able tree -> Python value (inverse of `encode`); raises ValueError on a malformed tag."""
    if type(tree) is list:
        return [decode(v) for v in tree]
    if type(tree) is not dict:
        return tree
    if len(tree) == 1:
        (tag, body), = tree.items()
        if tag in TAGS:
            return _decode_tag(tag, body)
    return {k: decode(v) for k, v in tree.items()}


def _decode_tag(tag: str, body):
    if tag == "__tuple__":
        return tuple(decode(v) for v in _as_list(tag, body))
    if tag in ("__set__", "__frozenset__"):
        items = frozenset(_hashable(decode(v)) for v in _as_list(tag, body))
        return items if tag == "__frozenset__" else set(items)
    if tag == "__dict__":
        pairs = _as_list(tag, body)
        if not all(type(p) is list and len(p) == 2 for p in pairs):
            raise ValueError("__dict__ must hold [key, value] pairs")
        return {_hashable(decode(k)): decode(v) for k, v in pairs}
    if tag == "__bytes__":
        return bytes.fromhex(body)
    if tag == "__float__":
        if body not in ("nan", "inf", "-inf"):
            raise ValueError(f"__float__ must be 'nan', 'inf' or '-inf', got {body!r}")
        return float(body)
    if tag == "__complex__":
        re, im = _as_list(tag, body)
        return complex(decode(re), decode(im))
    if tag == "__int__":
        return int(body, 16)
    return Unserialisable(str(body))


def _as_list(tag: str, body) -> list:
    if type(body) is not list:
        raise ValueError(f"{tag} must hold a JSON list, got {type(body).__name__}")
    return body


# Built once: json.dumps/json.loads with arguments build a new encoder/decoder on every call (several per
# candidate call in each process on the path).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODE = json.JSONDecoder().decode


def dumps(obj) -> bytes:
    """JSON-able tree -> compact UTF-8 bytes (no NaN literals: they are tagged)."""
    return _ENCODER.encode(obj).encode()


def loads(data: bytes):
    return _DECODE(data.decode())


def frame(obj) -> bytes:
    """One length-prefixed message (4-byte big-endian length + JSON)."""
    body = _ENCODER.encode(obj).encode()
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Incremental decoder of length-prefixed frames from a byte stream (rejects oversized frames)."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list:
        if not self.buf and len(data) >= 4:  # the usual case: exactly one whole frame, no copy into the buffer
            (n,) = _HEADER.unpack_from(data)
            if n + 4 == len(data) and n <= self.max_frame:
                return [_DECODE(data[4:].decode())]
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (n,) = _HEADER.unpack_from(self.buf)
            if n > self.max_frame:
                raise ValueError(f"frame of {n} bytes exceeds the {self.max_frame}-byte cap")
            if len(self.buf) < 4 + n:
                break
            out.append(_DECODE(self.buf[4:4 + n].decode()))
            del self.buf[:4 + n]
        return out
