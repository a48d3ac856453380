"""Java harness. Types follow MultiPL-E's Java translation: int -> long, float -> float, bool -> boolean,
str -> String, List -> ArrayList (boxed elements), Dict -> HashMap, Optional -> Optional (and Set -> HashSet), in a
class `Problem` whose static method is the entry point (MultiPL-E names it in camelCase). MultiPL-E's tuples are
javatuples' Pair, a library the sandbox does not have: tuple types are refused here."""

from __future__ import annotations

import math

from rewards.harness.types import T

NAME = "java"
NEEDS_TYPES = True
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_BOXED = {"int": "java.lang.Long", "float": "java.lang.Float", "bool": "java.lang.Boolean", "str": "java.lang.String"}


def type_name(t: T, boxed: bool = False) -> str:
    k = t.kind
    if k in _BOXED:
        return _BOXED[k] if boxed else {"int": "long", "float": "float", "bool": "boolean", "str": "String"}[k]
    if k == "list":
        return f"java.util.ArrayList<{type_name(t.args[0], True)}>"
    if k == "set":
        return f"java.util.HashSet<{type_name(t.args[0], True)}>"
    if k == "dict":
        return f"java.util.HashMap<{type_name(t.args[0], True)}, {type_name(t.args[1], True)}>"
    if k == "optional":
        return f"java.util.Optional<{type_name(t.args[0], True)}>"
    if k == "any":
        return "java.lang.Object"
    if k == "tuple":
        raise ValueError("Java tests cannot take tuples: MultiPL-E's Java uses javatuples, which the sandbox lacks")
    raise ValueError(f"Java tests cannot take a value of type {t}")


def string_literal(s: str) -> str:
    out = []
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\{code:03o}")  # never \\u: Java reads those before it reads string literals
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError("a lone surrogate has no Java string literal")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def literal(value, t: T) -> str:
    k = t.kind
    if k == "int":
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"{value} does not fit Java's long")
        return f"({value}L)" if value < 0 else f"{value}L"  # (Long) -1L would read as a subtraction
    if k == "float":
        x = float(value)
        if math.isnan(x):
            return "java.lang.Float.NaN"
        if math.isinf(x):
            return "java.lang.Float.POSITIVE_INFINITY" if x > 0 else "java.lang.Float.NEGATIVE_INFINITY"
        return f"({x!r}f)" if x < 0 else f"{x!r}f"
    if k == "bool":
        return "true" if value else "false"
    if k == "str":
        return string_literal(value)
    if k in ("list", "set"):
        items = sorted(value, key=repr) if k == "set" else value
        inner = ", ".join(f"({type_name(t.args[0], True)}) {literal(v, t.args[0])}" for v in items)
        return f"new {type_name(t)}(java.util.Arrays.asList({inner}))" if items else f"new {type_name(t)}()"
    if k == "dict":
        kv = ", ".join(f"{literal(key, t.args[0])}, {literal(v, t.args[1])}" for key, v in value.items())
        return f"SbxHarness.map(new {type_name(t)}(){', ' + kv if kv else ''})"
    if k == "optional":
        inner = type_name(t.args[0], True)
        return f"java.util.Optional.<{inner}>empty()" if value is None else \
            f"java.util.Optional.<{inner}>of({literal(value, t.args[0])})"
    type_name(t)  # raises with the reason
    raise ValueError(f"Java tests cannot take a value of type {t} (an argument needs a type to be written)")


def expected(value, t: T):
    k = t.kind
    if k == "any":  # an Object result: whatever the value is (Java has no tuple to print)
        if type(value) is tuple:
            raise ValueError("a Java method cannot return a tuple")
        if type(value) in (list, set, frozenset):
            conv = [expected(v, t) for v in value]
            return conv if type(value) is list else set(conv)
        if type(value) is dict:
            return {expected(key, t): expected(v, t) for key, v in value.items()}
        return value
    if k == "float":
        return float(value)
    if k in ("list", "set"):
        conv = [expected(v, t.args[0]) for v in value]
        return conv if k == "list" else set(conv)
    if k == "dict":
        return {expected(key, t.args[0]): expected(v, t.args[1]) for key, v in value.items()}
    if k == "optional":
        return None if value is None else expected(value, t.args[0])
    if k in ("int", "bool", "str"):
        return value
    type_name(t)
    raise ValueError(f"Java methods cannot return a value of type {t}")


LIBRARY = r"""
class SbxHarness {
    static java.io.FileOutputStream out;

    @SuppressWarnings("unchecked")
    static <K, V> java.util.HashMap<K, V> map(java.util.HashMap<K, V> m, java.lang.Object... kv) {
        for (int i = 0; i + 1 < kv.length; i += 2) m.put((K) kv[i], (V) kv[i + 1]);
        return m;
    }

    static void str(java.lang.StringBuilder b, java.lang.String s) {
        b.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"') b.append("\\\"");
            else if (c == '\\') b.append("\\\\");
            else if (c < 0x20) b.append(java.lang.String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        b.append('"');
    }

    static void real(java.lang.StringBuilder b, double v, java.lang.String text) {
        if (java.lang.Double.isNaN(v)) { b.append("{\"__float__\":\"nan\"}"); return; }
        if (java.lang.Double.isInfinite(v)) {
            b.append(v > 0 ? "{\"__float__\":\"inf\"}" : "{\"__float__\":\"-inf\"}");
            return;
        }
        if (text.indexOf('.') < 0 && text.indexOf('E') < 0) text = text + ".0";
        b.append(text);
    }

    static void seq(java.lang.StringBuilder b, java.lang.Iterable<?> items, int depth) {
        boolean first = true;
        for (java.lang.Object x : items) {
            if (!first) b.append(',');
            first = false;
            enc(b, x, depth + 1);
        }
    }

    static void enc(java.lang.StringBuilder b, java.lang.Object v, int depth) {
        if (depth > 64) { b.append("{\"__unserialisable__\":\"deep\"}"); return; }
        if (v == null) b.append("null");
        else if (v instanceof java.lang.Boolean) b.append(((java.lang.Boolean) v) ? "true" : "false");
        else if (v instanceof java.lang.Long || v instanceof java.lang.Integer || v instanceof java.lang.Short
                 || v instanceof java.lang.Byte || v instanceof java.math.BigInteger) b.append(v.toString());
        else if (v instanceof java.lang.Float) real(b, (java.lang.Float) v, v.toString());
        else if (v instanceof java.lang.Double) real(b, (java.lang.Double) v, v.toString());
        else if (v instanceof java.lang.Character || v instanceof java.lang.String) str(b, v.toString());
        else if (v instanceof java.util.Optional) {
            java.util.Optional<?> o = (java.util.Optional<?>) v;
            if (o.isPresent()) enc(b, o.get(), depth + 1); else b.append("null");
        } else if (v instanceof java.util.Map) {
            b.append("{\"__dict__\":[");
            boolean first = true;
            for (java.util.Map.Entry<?, ?> e : ((java.util.Map<?, ?>) v).entrySet()) {
                if (!first) b.append(',');
                first = false;
                b.append('[');
                enc(b, e.getKey(), depth + 1);
                b.append(',');
                enc(b, e.getValue(), depth + 1);
                b.append(']');
            }
            b.append("]}");
        } else if (v instanceof java.util.Set) {
            b.append("{\"__set__\":["); seq(b, (java.lang.Iterable<?>) v, depth); b.append("]}");
        } else if (v instanceof java.lang.Iterable) {
            b.append('['); seq(b, (java.lang.Iterable<?>) v, depth); b.append(']');
        } else if (v.getClass().isArray()) {
            b.append('[');
            int n = java.lang.reflect.Array.getLength(v);
            for (int i = 0; i < n; i++) {
                if (i > 0) b.append(',');
                enc(b, java.lang.reflect.Array.get(v, i), depth + 1);
            }
            b.append(']');
        } else {
            java.lang.String name = v.getClass().getSimpleName().replaceAll("[^A-Za-z0-9_]", "");
            if (name.length() > 60) name = name.substring(0, 60);
            b.append("{\"__unserialisable__\":\"").append(name).append("\"}");
        }
    }

    static void emit(java.lang.StringBuilder b) {
        try {
            out.write(b.toString().getBytes(java.nio.charset.StandardCharsets.UTF_8));
            out.flush();
        } catch (java.io.IOException e) {
        }
    }

    static java.lang.StringBuilder failed(int seq, java.lang.Throwable e) {
        java.lang.String name = e instanceof java.lang.OutOfMemoryError ? "MemoryError" : "Exception";
        return new java.lang.StringBuilder("{\"seq\":" + seq + ",\"exc\":\"" + name + "\"}\n");
    }
"""


def harness(entry: str, calls: list[list[tuple]]) -> str:
    cls, _, method = entry.rpartition(".")
    target = f"{cls or 'Problem'}.{method}"
    body = []
    for seq, args in enumerate(calls):
        decls = "".join(f"            {type_name(t)} sbx_a{i} = {literal(v, t)};\n" for i, (v, t) in enumerate(args))
        names = ", ".join(f"sbx_a{i}" for i in range(len(args)))
        body.append(
            f"        {{\n            java.lang.StringBuilder sbx_b = new java.lang.StringBuilder("
            f"\"{{\\\"seq\\\":{seq},\");\n            try {{\n{decls}"
            f"            java.lang.Object sbx_r = {target}({names});\n"
            f"            sbx_b.append(\"\\\"ok\\\":\");\n            enc(sbx_b, sbx_r, 0);\n"
            f"            sbx_b.append(\"}}\\n\");\n            }} catch (java.lang.Throwable sbx_e) {{\n"
            f"                sbx_b = failed({seq}, sbx_e);\n            }}\n            emit(sbx_b);\n        }}\n")
    main = ("    public static void main(java.lang.String[] sbx_args) {\n"
            "        try {\n            out = new java.io.FileOutputStream(\"/proc/self/fd/3\");\n"
            "        } catch (java.io.IOException e) {\n            return;\n        }\n"
            + "".join(body) + "    }\n}\n")
    return LIBRARY + main
