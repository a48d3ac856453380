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
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <unistd.h>

// The result encoder, by what a type can do rather than by name, so that it needs no container header of its own
// (only those of the types the test passes are included, above the program).
namespace sbx_harness {
struct Out {
  char *p = nullptr;
  size_t n = 0, cap = 0;
  void add(const char *s, size_t k) {
    if (n + k + 1 > cap) {
      cap = (n + k + 1) * 2;
      p = (char *)std::realloc(p, cap);
      if (!p) throw std::bad_alloc();
    }
    std::memcpy(p + n, s, k);
    n += k;
  }
  void add(const char *s) { add(s, std::strlen(s)); }
};
template <class T, class = void> struct iterable : std::false_type {};
template <class T> struct iterable<T, std::void_t<decltype(std::declval<const T &>().begin()),
                                                  decltype(std::declval<const T &>().end())>> : std::true_type {};
template <class T, class = void> struct text : std::false_type {};
template <class T> struct text<T, std::void_t<decltype(std::declval<const T &>().data()),
                                              decltype(std::declval<const T &>().size())>>
    : std::is_same<typename T::value_type, char> {};
template <class T, class = void> struct keyed : std::false_type {};
template <class T> struct keyed<T, std::void_t<typename T::key_type>> : std::true_type {};
template <class T, class = void> struct mapped : std::false_type {};
template <class T> struct mapped<T, std::void_t<typename T::mapped_type>> : std::true_type {};
template <class T, class = void> struct optional_like : std::false_type {};
template <class T> struct optional_like<T, std::void_t<decltype(std::declval<const T &>().has_value()),
                                                       decltype(*std::declval<const T &>())>> : std::true_type {};
template <class T, class = void> struct tuple_like : std::false_type {};
template <class T> struct tuple_like<T, std::void_t<decltype(std::tuple_size<T>::value)>> : std::true_type {};

inline void str(Out &o, const char *s, size_t k) {
  o.add("\"");
  for (size_t i = 0; i < k; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"') o.add("\\\"");
    else if (c == '\\') o.add("\\\\");
    else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o.add(b); }
    else o.add(s + i, 1);
  }
  o.add("\"");
}
inline void real(Out &o, double v, int digits) {
  if (__builtin_isnan(v)) { o.add("{\"__float__\":\"nan\"}"); return; }
  if (__builtin_isinf(v)) { o.add(v > 0 ? "{\"__float__\":\"inf\"}" : "{\"__float__\":\"-inf\"}"); return; }
  char b[48];
  int k = std::snprintf(b, sizeof b, "%.*g", digits, v);
  o.add(b, (size_t)k);
  if (!std::strpbrk(b, ".eE")) o.add(".0");
}
template <class T> void enc(Out &o, const T &v);
template <class T, size_t... I> void items(Out &o, const T &v, std::index_sequence<I...>) {
  ((o.add(I ? "," : ""), enc(o, std::get<I>(v))), ...);
}
template <class C> void seq(Out &o, const C &v) {
  bool first = true;
  for (const auto &x : v) { if (!first) o.add(","); first = false; enc(o, x); }
}
template <class T> void enc(Out &o, const T &v) {
  if constexpr (std::is_same<T, bool>::value) {
    o.add(v ? "true" : "false");
  } else if constexpr (std::is_same<T, char>::value) {
    str(o, &v, 1);
  } else if constexpr (std::is_integral<T>::value) {
    char b[32];
    int k = std::is_signed<T>::value ? std::snprintf(b, sizeof b, "%lld", (long long)v)
                                     : std::snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    o.add(b, (size_t)k);
  } else if constexpr (std::is_same<T, float>::value) {
    real(o, v, 9);
  } else if constexpr (std::is_floating_point<T>::value) {
    real(o, (double)v, 17);
  } else if constexpr (std::is_same<typename std::decay<T>::type, const char *>::value ||
                       std::is_same<typename std::decay<T>::type, char *>::value) {
    str(o, v, std::strlen(v));
  } else if constexpr (text<T>::value) {
    str(o, v.data(), v.size());
  } else if constexpr (optional_like<T>::value) {
    if (v.has_value()) enc(o, *v); else o.add("null");
  } else if constexpr (std::is_class<T>::value && std::is_convertible<T, bool>::value && !iterable<T>::value) {
    o.add(v ? "true" : "false");  // a std::vector<bool> element
  } else if constexpr (mapped<T>::value) {
    o.add("{\"__dict__\":[");
    bool first = true;
    for (const auto &kv : v) {
      if (!first) o.add(",");
      first = false;
      o.add("["); enc(o, kv.first); o.add(","); enc(o, kv.second); o.add("]");
    }
    o.add("]}");
  } else if constexpr (keyed<T>::value) {
    o.add("{\"__set__\":["); seq(o, v); o.add("]}");
  } else if constexpr (iterable<T>::value) {
    o.add("["); seq(o, v); o.add("]");
  } else if constexpr (tuple_like<T>::value) {
    o.add("{\"__tuple__\":["); items(o, v, std::make_index_sequence<std::tuple_size<T>::value>{}); o.add("]}");
  } else {
    o.add("{\"__unserialisable__\":\"type\"}");
  }
}
inline void emit(const Out &o) {
  const char *p = o.p;
  size_t n = o.n;
  while (n) {
    ssize_t w = ::write(3, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= (size_t)w;
  }
}
inline void answer(int seq, void (*call)(Out &)) {
  Out o;
  char head[48];
  o.add(head, (size_t)std::snprintf(head, sizeof head, "{\"seq\":%d,", seq));
  size_t start = o.n;
  try {
    o.add("\"ok\":");
    call(o);
  } catch (const std::bad_alloc &) {
    o.n = start;
    o.add("\"exc\":\"MemoryError\"");
  } catch (...) {
    o.n = start;
    o.add("\"exc\":\"Exception\"");
  }
  o.add("}\n");
  emit(o);
  std::free(o.p);
}
}  // namespace sbx_harness
"""
HEADERS = {"list": "vector", "set": "set", "dict": "map", "optional": "optional", "tuple": "tuple", "str": "string"}
"""The standard header each type of a call's arguments needs (included ahead of the program, as a stub would)."""


def _headers(t: T, found: set) -> set:
    if t.kind in HEADERS:
        found.add(HEADERS[t.kind])
    for a in t.args:
        _headers(a, found)
    return found


def harness(entry: str, calls: list[list[tuple]]) -> tuple[str, str]:
    """(prelude, harness): the headers the arguments' types need, to go before the program (which may use them too,
    as MultiPL-E's stubs include them), and the encoder and main, to go after it. calls: [(value, type)] per call."""
    headers = set()
    body = []
    for seq, args in enumerate(calls):
        for _, t in args:
            _headers(t, headers)
        decls = "".join(f"    {type_name(t)} sbx_a{i} = {literal(v, t)};\n" for i, (v, t) in enumerate(args))
        names = ", ".join(f"sbx_a{i}" for i in range(len(args)))
        body.append(f"  sbx_harness::answer({seq}, [](sbx_harness::Out &sbx_o) {{\n{decls}"
                    f"    sbx_harness::enc(sbx_o, {entry}({names}));\n  }});\n")
    prelude = "".join(f"#include <{h}>\n" for h in sorted(headers))
    return prelude, LIBRARY + "\nint main() {\n" + "".join(body) + "  return 0;\n}\n"
