"""JavaScript harness. Values follow MultiPL-E's JavaScript translation: numbers, booleans, strings, arrays for lists
and tuples, object literals for dicts (keys become strings), undefined for None (and Set for sets). JavaScript needs
no signature; with one, arguments are checked against it."""

from __future__ import annotations

import json
import math

from rewards.harness.types import T

NAME = "javascript"
NEEDS_TYPES = False
SAFE = 2**53 - 1


def literal(value, t: T) -> str:
    if value is None:
        return "undefined"
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int and t.kind != "float":
        if abs(value) > SAFE:
            raise ValueError(f"{value} is beyond JavaScript's exact integers (2**53 - 1)")
        return str(value)
    if type(value) in (int, float):
        x = float(value)
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "Infinity" if x > 0 else "(-Infinity)"
        return repr(x)
    if type(value) is str:
        return json.dumps(value, ensure_ascii=False)
    inner = _inner(t)
    if type(value) in (list, tuple):
        args = t.args if t.kind == "tuple" else [inner[0]] * len(value)
        return "[" + ", ".join(literal(v, a) for v, a in zip(value, args, strict=True)) + "]"
    if type(value) in (set, frozenset):
        return "new Set([" + ", ".join(literal(v, inner[0]) for v in sorted(value, key=repr)) + "])"
    if type(value) is dict:
        return "{" + ", ".join(f"{json.dumps(_key(k))}: {literal(v, inner[1])}" for k, v in value.items()) + "}"
    raise ValueError(f"JavaScript tests cannot take a {type(value).__name__}")


def _inner(t: T) -> tuple:
    if t.kind in ("list", "set", "optional"):
        return (t.args[0], T("any"))
    if t.kind == "dict":
        return t.args
    return (T("any"), T("any"))


def _key(k) -> str:
    """The string a JavaScript object literal makes of a Python dict key."""
    if type(k) is bool:
        return "true" if k else "false"
    if type(k) is float and k.is_integer():
        return str(int(k))
    if type(k) in (int, float, str):
        return str(k)
    raise ValueError(f"a {type(k).__name__} cannot be a JavaScript object key")


def expected(value, t: T):
    """What a correct JavaScript function's result looks like once the harness printed it and it was read back:
    tuples are arrays, dict keys strings; an integral number reads back as an int (which matches a float)."""
    if t.kind == "optional":
        t = t.args[0]
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value
    inner = _inner(t)
    if type(value) in (list, tuple):
        args = t.args if t.kind == "tuple" and len(t.args) == len(value) else [inner[0]] * len(value)
        return [expected(v, a) for v, a in zip(value, args, strict=True)]
    if type(value) in (set, frozenset):
        return {expected(v, inner[0]) for v in value}
    if type(value) is dict:
        return {_key(k): expected(v, inner[1]) for k, v in value.items()}
    raise ValueError(f"JavaScript functions cannot return a {type(value).__name__}")


LIBRARY = r"""
;(function () {
  const sbxFs = require("fs");
  const sbxStringify = JSON.stringify;
  function sbxEnc(v, depth) {
    if (depth > 64) return '{"__unserialisable__":"deep"}';
    if (v === null || v === undefined) return "null";
    switch (typeof v) {
      case "boolean": return v ? "true" : "false";
      case "bigint": return v.toString();
      case "string": return sbxStringify(v);
      case "number": {
        if (Number.isNaN(v)) return '{"__float__":"nan"}';
        if (!Number.isFinite(v)) return v > 0 ? '{"__float__":"inf"}' : '{"__float__":"-inf"}';
        if (Number.isInteger(v) && Math.abs(v) <= Number.MAX_SAFE_INTEGER) return String(v);
        const s = String(v);
        return /[.eE]/.test(s) ? s : s + ".0";
      }
    }
    if (Array.isArray(v)) return "[" + v.map((x) => sbxEnc(x, depth + 1)).join(",") + "]";
    if (v instanceof Set) return '{"__set__":[' + Array.from(v, (x) => sbxEnc(x, depth + 1)).join(",") + "]}";
    if (v instanceof Map) {
      return '{"__dict__":[' + Array.from(v, ([k, x]) => "[" + sbxEnc(k, depth + 1) + "," + sbxEnc(x, depth + 1) + "]")
        .join(",") + "]}";
    }
    if (typeof v === "object") {
      const proto = Object.getPrototypeOf(v);
      if (proto === Object.prototype || proto === null) {
        return '{"__dict__":[' + Object.keys(v).map((k) => "[" + sbxStringify(k) + "," + sbxEnc(v[k], depth + 1) + "]")
          .join(",") + "]}";
      }
    }
    const name = String((v && v.constructor && v.constructor.name) || typeof v).replace(/[^A-Za-z0-9_]/g, "");
    return '{"__unserialisable__":' + sbxStringify(name.slice(0, 60)) + "}";
  }
  function sbxWrite(line) {
    const buf = Buffer.from(line, "utf8");
    let off = 0;
    while (off < buf.length) {
      try {
        off += sbxFs.writeSync(3, buf, off);
      } catch (e) {
        if (e && e.code === "EAGAIN") continue;
        return;
      }
    }
  }
  function sbxCall(seq, f) {
    let line;
    try {
      line = '{"seq":' + seq + ',"ok":' + sbxEnc(f(), 0) + "}\n";
    } catch (e) {
      const memory = e instanceof RangeError &&
        /allocation|memory|Invalid array length|Invalid string length/.test(String(e && e.message));
      line = '{"seq":' + seq + ',"exc":"' + (memory ? "MemoryError" : "Exception") + '"}\n';
    }
    sbxWrite(line);
  }
"""


def harness(entry: str, calls: list[list[tuple]]) -> str:
    body = "".join(f"  sbxCall({seq}, () => {entry}({', '.join(literal(v, t) for v, t in args)}));\n"
                   for seq, args in enumerate(calls))
    return LIBRARY + body + "})();\n"
