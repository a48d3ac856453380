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

Trees that come from a program are untrusted: `check_tree` validates them (types, finite numbers, well-formed
tags, depth and size caps) before anything else looks at them, `canonical` gives every tree a string that
sorts and compares without hashing or calling anything, and `decode(..., guard=True)` refuses containers
whose elements were chosen to share one hash value (they make every set or dict built from them quadratic).
"""

import gc
import json
import math
import struct

TAGS = ("__tuple__", "__set__", "__frozenset__", "__dict__", "__bytes__", "__float__", "__complex__", "__int__",
        "__unserialisable__")
MAX_FRAME = 64 << 20
MAX_DEPTH = 64
"""Deepest nesting of a value that crosses (the encoder makes deeper values unserialisable)."""
_MAX_JSON_DEPTH = 3 * MAX_DEPTH + 3  # a dict level is three JSON levels: {"__dict__": [[k, v], ...]}
MAX_INT_HEX = 8192
"""Longest __int__ body in hex digits (ints up to 2**32768): arithmetic on bigger ones is slow in test code."""
MAX_COLLISIONS = 64
"""More distinct elements than this with one hash value make a guarded decode refuse the container."""
_HEXDIGITS = "0123456789abcdefABCDEF"
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


class Malformed(ValueError):
    """Untrusted data that is not a well-formed plain-data tree (or a frame that is not one)."""


class FrameTooLarge(Malformed):
    """A frame whose header announces more bytes than the reader accepts."""


class NotPlain(ValueError):
    """Raised by `encode(..., strict=True)` for a value with no plain-data form; .value is that value."""

    def __init__(self, value):
        super().__init__(f"{type(value).__name__} is not plain data")
        self.value = value


def encode(value, _depth: int = 0, strict: bool = False):
    """Python value -> JSON-able tree in the tagged form above (strict types, depth-limited). Values with no plain
    form become {"__unserialisable__": type name}, or raise NotPlain if strict."""
    if _depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
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


class gc_paused:
    """No cyclic garbage collection while parsing or decoding a program's data: JSON trees have no cycles, and
    with the collector on, a tree of a million small containers took ten times as long to parse."""

    def __enter__(self):
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was:
            gc.enable()


def decode(tree, guard: bool = False):
    """JSON-able tree -> Python value (inverse of `encode`); raises ValueError on a malformed tag.

    guard: the tree came from a program; raise Malformed instead of building a container in which more than
    MAX_COLLISIONS distinct elements share one hash value (test code may make a set of any list it gets)."""
    if type(tree) is list:
        if _SCALARS.issuperset(map(type, tree)):  # no tags inside: a copy
            return _guarded(list(tree), guard)
        return _guarded([decode(v, guard) for v in tree], guard)
    if type(tree) is not dict:
        return tree
    if len(tree) == 1:
        (tag, body), = tree.items()
        if tag in TAGS:
            return _decode_tag(tag, body, guard)
    return {k: decode(v, guard) for k, v in tree.items()}  # string keys: their hashes are randomised


def _decode_tag(tag: str, body, guard: bool = False):
    if tag == "__tuple__":
        return tuple(_guarded([decode(v, guard) for v in _as_list(tag, body)], guard))
    if tag in ("__set__", "__frozenset__"):
        items = frozenset(_guarded([_hashable(decode(v, guard)) for v in _as_list(tag, body)], guard))
        return items if tag == "__frozenset__" else set(items)
    if tag == "__dict__":
        pairs = _as_list(tag, body)
        if not all(type(p) is list and len(p) == 2 for p in pairs):
            raise ValueError("__dict__ must hold [key, value] pairs")
        keys = _guarded([_hashable(decode(k, guard)) for k, _ in pairs], guard)
        return dict(zip(keys, (decode(v, guard) for _, v in pairs), strict=True))
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


def _guarded(items: list, guard: bool) -> list:
    """items, unless guard is on and more than MAX_COLLISIONS distinct hashable items share one hash value."""
    if not guard or len(items) <= MAX_COLLISIONS or not _CHOSEN_HASH.intersection(map(type, items)):
        return items
    chosen = [x for x in items if type(x) in _CHOSEN_HASH]
    counts = {}  # hash values are ints that hash to themselves: distinct ones never collide here
    for h in map(hash, chosen):
        counts[h] = counts.get(h, 0) + 1
    for h, n in counts.items():
        if n > MAX_COLLISIONS:  # equal items share a hash harmlessly: count the distinct ones by canonical form
            distinct = {canonical(encode(x)) for x in chosen if hash(x) == h}
            if len(distinct) > MAX_COLLISIONS:
                raise Malformed(f"{len(distinct)} distinct elements share one hash value")
    return items


_SCALARS = {int, float, str, bool, type(None)}
# Types whose hash the program can choose (str and bytes hashes are keyed by a per-run secret).
_CHOSEN_HASH = {int, float, complex, tuple, frozenset}


def _as_list(tag: str, body) -> list:
    if type(body) is not list:
        raise ValueError(f"{tag} must hold a JSON list, got {type(body).__name__}")
    return body


def check_tree(tree, max_nodes: int) -> int:
    """Validate an untrusted JSON tree as plain data in the tagged form; returns its number of nodes.

    Raises Malformed for: a non-finite float outside a __float__ tag, a malformed tag body, nesting deeper than
    the encoder produces, or more than max_nodes nodes. Iterative (no recursion on the program's data), and a
    list's scalar elements are checked in the loop over it, not one by one through the stack."""
    nodes, todo = 1, [(tree, 0)]
    while todo:
        t, depth = todo.pop()
        if depth > _MAX_JSON_DEPTH:
            raise Malformed(f"nested deeper than {MAX_DEPTH} levels")
        tt = type(t)
        if tt is list:
            children = t
        elif tt is dict:
            if len(t) == 1 and next(iter(t)) in TAGS:
                (tag, body), = t.items()
                children = _check_tag(tag, body)
                depth += 1 if tag != "__dict__" else 2  # the tag's body list (and a pair's list)
            else:
                children = t.values()  # JSON object keys are strings
        else:
            _check_scalar(t)
            continue
        nodes += len(children)
        if nodes > max_nodes:
            raise Malformed(f"more than {max_nodes} values")
        for v in children:
            tv = type(v)
            if tv is list or tv is dict:
                if v:
                    todo.append((v, depth + 1))
            elif tv is not int and tv is not str and tv is not bool and v is not None:
                _check_scalar(v)
    return nodes


def _check_scalar(t) -> None:
    tt = type(t)
    if tt is float:
        if not math.isfinite(t):
            raise Malformed("a non-finite number outside a __float__ tag")
    elif not (t is None or tt is bool or tt is str or tt is int):
        raise Malformed(f"a {tt.__name__}")


def _is_hex(text: str) -> bool:
    return bool(text) and not text.strip(_HEXDIGITS)


def _check_tag(tag: str, body) -> list:
    """Check a tag's body; returns the trees inside it (for containers) or []."""
    if tag in ("__tuple__", "__set__", "__frozenset__", "__dict__"):
        if type(body) is not list:
            raise Malformed(f"{tag} must hold a list")
        if tag != "__dict__":
            return body
        if not all(type(p) is list and len(p) == 2 for p in body):
            raise Malformed("__dict__ must hold [key, value] pairs")
        return [v for p in body for v in p]
    if tag == "__bytes__":
        if type(body) is not str or len(body) % 2 or (body and not _is_hex(body)):
            raise Malformed("__bytes__ must hold an even number of hex digits")
    elif tag == "__float__":
        if body not in ("nan", "inf", "-inf"):
            raise Malformed("__float__ must be 'nan', 'inf' or '-inf'")
    elif tag == "__complex__":
        if type(body) is not list or len(body) != 2 or not all(
                (type(x) is float and math.isfinite(x)) or (type(x) is dict and len(x) == 1
                                                            and x.get("__float__") in ("nan", "inf", "-inf"))
                for x in body):
            raise Malformed("__complex__ must hold two floats")
    elif tag == "__int__":
        digits = body[1:] if type(body) is str and body.startswith("-") else body
        if type(body) is not str or len(digits) > MAX_INT_HEX or not _is_hex(digits):
            raise Malformed(f"__int__ must hold at most {MAX_INT_HEX} hex digits")
    elif type(body) is not str or len(body) > 100:  # __unserialisable__
        raise Malformed("__unserialisable__ must hold a type name")
    return []


_KINDS = {"__tuple__": "tuple", "__set__": "set", "__frozenset__": "frozenset", "__dict__": "dict",
          "__bytes__": "bytes", "__float__": "float", "__complex__": "complex", "__int__": "int",
          "__unserialisable__": "unserialisable"}


def view(tree) -> tuple[str, object]:
    """(kind, payload) of a valid tree, one spelling per value: an __int__ tag and a plain int are both
    ("int", value), a plain JSON object and a __dict__ tag are both ("dict", [[key, value], ...])."""
    t = type(tree)
    if tree is None:
        return "none", None
    if t is bool:
        return "bool", tree
    if t is int or t is float or t is str:
        return t.__name__, tree
    if t is list:
        return "list", tree
    if len(tree) == 1:
        (tag, body), = tree.items()
        kind = _KINDS.get(tag)
        if kind == "bytes":
            return kind, body.lower()
        if kind == "float":
            return kind, float(body)
        if kind == "int":
            return kind, int(body, 16)
        if kind is not None:
            return kind, body
    return "dict", [[k, v] for k, v in tree.items()]


def canonical(tree) -> str:
    """A string that identifies a valid tree's value exactly: equal values (1 and {"__int__": "1"}, 0.0 and -0.0,
    NaN and NaN, sets in any order) give equal strings, different ones (1, 1.0 and True) different strings.
    Sets and dict items are sorted by these strings, so comparing never hashes the program's values."""
    kind, v = view(tree)
    if kind == "none":
        return "n"
    if kind == "bool":
        return "T" if v else "F"
    if kind == "int":
        return f"i{v:x};"
    if kind == "float":
        return "fnan;" if v != v else f"f{(v + 0.0).hex()};"  # + 0.0 turns -0.0 into 0.0
    if kind in ("str", "bytes", "unserialisable"):
        return f"{kind[0]}{len(v)}:{v}"
    if kind == "complex":
        return "c" + canonical(v[0]) + canonical(v[1])
    if kind in ("list", "tuple"):
        return f"{kind[0]}{len(v)}(" + "".join(map(canonical, v)) + ")"
    if kind == "dict":
        return f"d{len(v)}(" + "".join(sorted(canonical(k) + canonical(x) for k, x in v)) + ")"
    return f"{'S' if kind == 'set' else 'Z'}{len(v)}(" + "".join(sorted(map(canonical, v))) + ")"


# Built once: json.dumps/json.loads with arguments build a new encoder/decoder on every call (several per
# candidate call in each process on the path).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODE = json.JSONDecoder().decode


def dumps(obj) -> bytes:
    """JSON-able tree -> compact UTF-8 bytes (no NaN literals: they are tagged)."""
    return _ENCODER.encode(obj).encode()


def loads(data: bytes | str):
    return _DECODE(data if type(data) is str else data.decode())


def frame(obj) -> bytes:
    """One length-prefixed message (4-byte big-endian length + JSON)."""
    body = _ENCODER.encode(obj).encode()
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Incremental decoder of length-prefixed frames from a byte stream (rejects oversized frames).

    `feed` raises FrameTooLarge for a header over the cap and Malformed for a frame that is not JSON (invalid
    UTF-8, bad syntax, nesting too deep for the parser); after either, the stream cannot be trusted any more."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list:
        if not self.buf and len(data) >= 4:  # the usual case: exactly one whole frame, no copy into the buffer
            (n,) = _HEADER.unpack_from(data)
            if n + 4 == len(data) and n <= self.max_frame:
                return [_parse(data[4:])]
        self.buf += data
        return [_parse(body) for body in self._bodies()]

    def _bodies(self):
        """Take each complete frame's body off the buffer, in order (the one loop both readers share)."""
        while len(self.buf) >= 4:
            (n,) = _HEADER.unpack_from(self.buf)
            if n > self.max_frame:
                raise FrameTooLarge(f"frame of {n} bytes exceeds the {self.max_frame}-byte cap")
            if len(self.buf) < 4 + n:
                return
            with memoryview(self.buf) as whole:  # one copy of the body, not two
                body = bytes(whole[4:4 + n])
            del self.buf[:4 + n]
            yield body


BLOBS = "__blobs__"
BLOB_DATA = "__blob_data__"


def frame_blobs(obj: dict, blobs: list) -> bytes:
    """A frame of obj followed by raw blobs (compiled programs: no JSON escaping, no base64 on the way), for the
    sandbox's own channels only (`TrustedReader`); the reader hands them back as obj[BLOB_DATA]."""
    if not blobs:
        return frame(obj)
    head = frame({**obj, BLOBS: [len(b) for b in blobs]})
    return b"".join([head, *(_HEADER.pack(len(b)) + bytes(b) for b in blobs)])


def reframe(obj: dict) -> bytes:
    """obj as `TrustedReader` gave it, framed again with its blobs (to pass a job on)."""
    if BLOB_DATA not in obj:
        return frame(obj)
    rest = {k: v for k, v in obj.items() if k not in (BLOBS, BLOB_DATA)}
    return frame_blobs(rest, obj[BLOB_DATA])


class TrustedReader(FrameReader):
    """Frames between the sandbox's own processes (parent, zygote, slots, the program before it runs any of its
    code): a JSON frame that announces BLOBS is followed by that many raw frames, returned with it as BLOB_DATA.
    Never for a channel a program writes on."""

    def __init__(self, max_frame: int = MAX_FRAME):
        super().__init__(max_frame)
        self.pending = None

    def feed(self, data: bytes) -> list:
        self.buf += data
        out = []
        for body in self._bodies():
            if self.pending is not None:
                got, want = self.pending[BLOB_DATA], self.pending[BLOBS]
                if len(body) != want[len(got)]:
                    raise Malformed(f"a blob of {len(body)} bytes where {want[len(got)]} were announced")
                got.append(body)
                if len(got) == len(want):
                    out.append(self.pending)
                    self.pending = None
                continue
            obj = _parse(body)
            if type(obj) is dict and obj.get(BLOBS):
                obj[BLOB_DATA] = []
                self.pending = obj
            else:
                out.append(obj)
        return out


def _parse(body) -> object:
    try:
        return _DECODE(body.decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Malformed(f"not a JSON frame ({type(exc).__name__})") from None
