"""C++ harness. Types follow MultiPL-E's C++ translation: int -> long, float -> float, bool -> bool,
str -> std::string, List -> std::vector, Tuple -> std::tuple, Dict -> std::map, Optional -> std::optional
(and Set -> std::set); Any has no C++ form here."""

from __future__ import annotations

import math

from rewards.harness.types import T

NAME = "cpp"
NEEDS_TYPES = True
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def type_name(t: T) -> str:
    k = t.kind
    simple = {"int": "long", "float": "float", "bool": "bool", "str": "std::string"}
    if k in simple:
        return simple[k]
    if k == "list":
        return f"std::vector<{type_name(t.args[0])}>"
    if k == "set":
        return f"std::set<{type_name(t.args[0])}>"
    if k == "tuple":
        return f"std::tuple<{', '.join(map(type_name, t.args))}>"
    if k == "dict":
        return f"std::map<{type_name(t.args[0])}, {type_name(t.args[1])}>"
    if k == "optional":
        return f"std::optional<{type_name(t.args[0])}>"
    raise ValueError(f"C++ tests cannot take a value of type {t} (MultiPL-E's C++ has no form for it)")


def string_literal(s: str) -> str:
    out = []
    for ch in s.encode("utf-8", "surrogatepass"):
        if ch in (0x22, 0x5C):
            out.append("\\" + chr(ch))
        elif ch < 0x20 or ch == 0x7F or ch == 0x3F:  # controls; '?' so that no trigraph can form
            out.append(f"\\{ch:03o}")
        else:
            out.append(chr(ch) if ch < 0x80 else f"\\{ch:03o}")
    return '"' + "".join(out) + '"'


def literal(value, t: T) -> str:
    k = t.kind
    if k == "int":
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"{value} does not fit C++'s long")
        return f"({INT_MIN + 1}L - 1)" if value == INT_MIN else f"{value}L"
    if k == "float":
        x = float(value)
        if math.isnan(x):
            return "NAN"
        if math.isinf(x):
            return "INFINITY" if x > 0 else "(-INFINITY)"
        return f"{x!r}f"
    if k == "bool":
        return "true" if value else "false"
    if k == "str":
        return f"std::string({string_literal(value)}, {len(value.encode('utf-8', 'surrogatepass'))})"
    if k in ("list", "set"):
        items = sorted(value, key=repr) if k == "set" else value
        return f"{type_name(t)}{{{', '.join(literal(v, t.args[0]) for v in items)}}}"
    if k == "tuple":
        return f"{type_name(t)}{{{', '.join(literal(v, a) for v, a in zip(value, t.args, strict=True))}}}"
    if k == "dict":
        pairs = ", ".join(f"{{{literal(key, t.args[0])}, {literal(v, t.args[1])}}}" for key, v in value.items())
        return f"{type_name(t)}{{{pairs}}}"
    if k == "optional":
        return "std::nullopt" if value is None else f"{type_name(t)}({literal(value, t.args[0])})"
    type_name(t)  # raises with the reason
    raise ValueError(f"C++ tests cannot take a value of type {t}")


def expected(value, t: T):
    """What a correct C++ function's result looks like once the harness printed it and it was read back."""
    k = t.kind
    if k == "float":
        return float(value)
    if k in ("list", "set"):
        conv = [expected(v, t.args[0]) for v in value]
        return conv if k == "list" else set(conv)
    if k == "tuple":
        return tuple(expected(v, a) for v, a in zip(value, t.args, strict=True))
    if k == "dict":
        return {expected(key, t.args[0]): expected(v, t.args[1]) for key, v in value.items()}
    if k == "optional":
        return None if value is None else expected(value, t.args[0])
    if k in ("int", "bool", "str"):
        return value
    raise ValueError(f"C++ functions cannot return a value of type {t}")


LIBRARY = r"""
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>
#include <unistd.h>

namespace sbx_harness {
inline void str(std::string &o, const std::string &s) {
  o += '"';
  for (unsigned char c : s) {
    if (c == '"') o += "\\\"";
    else if (c == '\\') o += "\\\\";
    else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
    else o += (char)c;
  }
  o += '"';
}
inline void real(std::string &o, double v, int digits) {
  if (std::isnan(v)) { o += "{\"__float__\":\"nan\"}"; return; }
  if (std::isinf(v)) { o += v > 0 ? "{\"__float__\":\"inf\"}" : "{\"__float__\":\"-inf\"}"; return; }
  char b[48];
  std::snprintf(b, sizeof b, "%.*g", digits, v);
  std::string s(b);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  o += s;
}
inline void enc(std::string &o, bool v) { o += v ? "true" : "false"; }
inline void enc(std::string &o, char v) { str(o, std::string(1, v)); }
inline void enc(std::string &o, float v) { real(o, v, 9); }
inline void enc(std::string &o, double v) { real(o, v, 17); }
inline void enc(std::string &o, long double v) { real(o, (double)v, 17); }
inline void enc(std::string &o, const std::string &v) { str(o, v); }
inline void enc(std::string &o, const char *v) { str(o, v); }
template <class I, typename std::enable_if<std::is_integral<I>::value && !std::is_same<I, bool>::value &&
                                           !std::is_same<I, char>::value, int>::type = 0>
inline void enc(std::string &o, I v) { o += std::to_string(v); }
template <class A> void enc(std::string &o, const std::vector<A> &v);
template <class A> void enc(std::string &o, const std::set<A> &v);
template <class A> void enc(std::string &o, const std::unordered_set<A> &v);
template <class K, class V> void enc(std::string &o, const std::map<K, V> &v);
template <class K, class V> void enc(std::string &o, const std::unordered_map<K, V> &v);
template <class A, class B> void enc(std::string &o, const std::pair<A, B> &v);
template <class... A> void enc(std::string &o, const std::tuple<A...> &v);
template <class A> void enc(std::string &o, const std::optional<A> &v);
template <class C> void seq(std::string &o, const C &v) {
  bool first = true;
  for (const auto &x : v) { if (!first) o += ','; first = false; enc(o, x); }
}
template <class C> void pairs(std::string &o, const C &v) {
  o += "{\"__dict__\":[";
  bool first = true;
  for (const auto &kv : v) {
    if (!first) o += ',';
    first = false;
    o += '['; enc(o, kv.first); o += ','; enc(o, kv.second); o += ']';
  }
  o += "]}";
}
template <class A> void enc(std::string &o, const std::vector<A> &v) { o += '['; seq(o, v); o += ']'; }
template <class A> void enc(std::string &o, const std::set<A> &v) { o += "{\"__set__\":["; seq(o, v); o += "]}"; }
template <class A> void enc(std::string &o, const std::unordered_set<A> &v) {
  o += "{\"__set__\":["; seq(o, v); o += "]}";
}
template <class K, class V> void enc(std::string &o, const std::map<K, V> &v) { pairs(o, v); }
template <class K, class V> void enc(std::string &o, const std::unordered_map<K, V> &v) { pairs(o, v); }
template <class A, class B> void enc(std::string &o, const std::pair<A, B> &v) {
  o += "{\"__tuple__\":["; enc(o, v.first); o += ','; enc(o, v.second); o += "]}";
}
template <class... A> void enc(std::string &o, const std::tuple<A...> &v) {
  o += "{\"__tuple__\":[";
  bool first = true;
  std::apply([&](const auto &...x) { ((o += first ? "" : ",", first = false, enc(o, x)), ...); }, v);
  o += "]}";
}
template <class A> void enc(std::string &o, const std::optional<A> &v) {
  if (v) enc(o, *v); else o += "null";
}
inline void emit(const std::string &s) {
  const char *p = s.data();
  size_t n = s.size();
  while (n) {
    ssize_t w = ::write(3, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= (size_t)w;
  }
}
}  // namespace sbx_harness
"""


def harness(entry: str, calls: list[list[tuple]]) -> str:
    """calls: one list of (value, type) per call."""
    body = []
    for seq, args in enumerate(calls):
        decls = "".join(f"      {type_name(t)} sbx_a{i} = {literal(v, t)};\n" for i, (v, t) in enumerate(args))
        names = ", ".join(f"sbx_a{i}" for i in range(len(args)))
        body.append(
            f"  {{\n    std::string sbx_line = \"{{\\\"seq\\\":{seq},\";\n    try {{\n{decls}"
            f"      auto sbx_r = {entry}({names});\n      std::string sbx_v;\n      sbx_harness::enc(sbx_v, sbx_r);\n"
            f"      sbx_line += \"\\\"ok\\\":\" + sbx_v;\n"
            f"    }} catch (const std::bad_alloc &) {{\n      sbx_line += \"\\\"exc\\\":\\\"MemoryError\\\"\";\n"
            f"    }} catch (...) {{\n      sbx_line += \"\\\"exc\\\":\\\"Exception\\\"\";\n    }}\n"
            f"    sbx_line += \"}}\\n\";\n    sbx_harness::emit(sbx_line);\n  }}\n")
    return LIBRARY + "\nint main() {\n" + "".join(body) + "  return 0;\n}\n"
