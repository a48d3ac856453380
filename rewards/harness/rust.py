"""Rust harness. Types follow MultiPL-E's Rust translation: int -> isize, float -> f64, bool -> bool,
str -> String, List -> Vec, Tuple -> a tuple, Dict -> HashMap, Optional -> Option (and Set -> HashSet)."""

from __future__ import annotations

import math

from rewards.harness.types import T

NAME = "rust"
NEEDS_TYPES = True
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def type_name(t: T) -> str:
    k = t.kind
    simple = {"int": "isize", "float": "f64", "bool": "bool", "str": "String"}
    if k in simple:
        return simple[k]
    if k == "list":
        return f"Vec<{type_name(t.args[0])}>"
    if k == "set":
        return f"std::collections::HashSet<{type_name(t.args[0])}>"
    if k == "tuple":
        return "(" + "".join(type_name(a) + ", " for a in t.args).rstrip(" ") + ")" if len(t.args) == 1 else \
            "(" + ", ".join(map(type_name, t.args)) + ")"
    if k == "dict":
        return f"std::collections::HashMap<{type_name(t.args[0])}, {type_name(t.args[1])}>"
    if k == "optional":
        return f"Option<{type_name(t.args[0])}>"
    raise ValueError(f"Rust tests cannot take a value of type {t} (MultiPL-E's Rust has no form for it)")


def string_literal(s: str) -> str:
    out = []
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{{{code:x}}}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError("a lone surrogate has no Rust string literal")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def literal(value, t: T) -> str:
    k = t.kind
    if k == "int":
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"{value} does not fit Rust's isize")
        return "isize::MIN" if value == INT_MIN else f"({value}isize)" if value < 0 else f"{value}isize"
    if k == "float":
        x = float(value)
        if math.isnan(x):
            return "f64::NAN"
        if math.isinf(x):
            return "f64::INFINITY" if x > 0 else "f64::NEG_INFINITY"
        return f"({x!r}f64)" if x < 0 else f"{x!r}f64"
    if k == "bool":
        return "true" if value else "false"
    if k == "str":
        return f"String::from({string_literal(value)})"
    if k == "list":
        return f"vec![{', '.join(literal(v, t.args[0]) for v in value)}]" if value else \
            f"Vec::<{type_name(t.args[0])}>::new()"
    if k == "set":
        items = ", ".join(literal(v, t.args[0]) for v in sorted(value, key=repr))
        return f"std::collections::HashSet::<{type_name(t.args[0])}>::from([{items}])"
    if k == "tuple":
        parts = [literal(v, a) for v, a in zip(value, t.args, strict=True)]
        return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"
    if k == "dict":
        pairs = ", ".join(f"({literal(key, t.args[0])}, {literal(v, t.args[1])})" for key, v in value.items())
        return f"std::collections::HashMap::<{type_name(t.args[0])}, {type_name(t.args[1])}>::from([{pairs}])"
    if k == "optional":
        return "None" if value is None else f"Some({literal(value, t.args[0])})"
    type_name(t)  # raises with the reason
    raise ValueError(f"Rust tests cannot take a value of type {t}")


def expected(value, t: T):
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
    raise ValueError(f"Rust functions cannot return a value of type {t}")


LIBRARY = r"""
#[allow(dead_code)]
mod sbx_harness {
    pub trait Enc {
        fn enc(&self, o: &mut String);
    }
    pub fn string(o: &mut String, s: &str) {
        o.push('"');
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                c => o.push(c),
            }
        }
        o.push('"');
    }
    fn real(o: &mut String, v: f64, text: String) {
        if v.is_nan() {
            o.push_str("{\"__float__\":\"nan\"}");
        } else if v.is_infinite() {
            o.push_str(if v > 0.0 { "{\"__float__\":\"inf\"}" } else { "{\"__float__\":\"-inf\"}" });
        } else if text.contains('.') || text.contains('e') {
            o.push_str(&text);
        } else {
            o.push_str(&text);
            o.push_str(".0");
        }
    }
    macro_rules! ints {
        ($($t:ty)*) => { $(impl Enc for $t { fn enc(&self, o: &mut String) { o.push_str(&self.to_string()); } })* }
    }
    ints!(i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize);
    impl Enc for f64 { fn enc(&self, o: &mut String) { real(o, *self, format!("{:?}", self)); } }
    impl Enc for f32 { fn enc(&self, o: &mut String) { real(o, *self as f64, format!("{:?}", self)); } }
    impl Enc for bool { fn enc(&self, o: &mut String) { o.push_str(if *self { "true" } else { "false" }); } }
    impl Enc for char { fn enc(&self, o: &mut String) { string(o, &self.to_string()); } }
    impl Enc for String { fn enc(&self, o: &mut String) { string(o, self); } }
    impl Enc for str { fn enc(&self, o: &mut String) { string(o, self); } }
    impl Enc for () { fn enc(&self, o: &mut String) { o.push_str("null"); } }
    impl<T: Enc + ?Sized> Enc for &T { fn enc(&self, o: &mut String) { (**self).enc(o); } }
    impl<T: Enc + ?Sized> Enc for Box<T> { fn enc(&self, o: &mut String) { (**self).enc(o); } }
    impl<T: Enc> Enc for Option<T> {
        fn enc(&self, o: &mut String) { match self { Some(v) => v.enc(o), None => o.push_str("null") } }
    }
    fn seq<'a, T: Enc + 'a, I: Iterator<Item = &'a T>>(o: &mut String, items: I) {
        let mut first = true;
        for x in items {
            if !first { o.push(','); }
            first = false;
            x.enc(o);
        }
    }
    impl<T: Enc> Enc for [T] { fn enc(&self, o: &mut String) { o.push('['); seq(o, self.iter()); o.push(']'); } }
    impl<T: Enc> Enc for Vec<T> { fn enc(&self, o: &mut String) { o.push('['); seq(o, self.iter()); o.push(']'); } }
    impl<T: Enc> Enc for std::collections::VecDeque<T> {
        fn enc(&self, o: &mut String) { o.push('['); seq(o, self.iter()); o.push(']'); }
    }
    impl<T: Enc, S> Enc for std::collections::HashSet<T, S> {
        fn enc(&self, o: &mut String) { o.push_str("{\"__set__\":["); seq(o, self.iter()); o.push_str("]}"); }
    }
    impl<T: Enc> Enc for std::collections::BTreeSet<T> {
        fn enc(&self, o: &mut String) { o.push_str("{\"__set__\":["); seq(o, self.iter()); o.push_str("]}"); }
    }
    fn pairs<'a, K: Enc + 'a, V: Enc + 'a, I: Iterator<Item = (&'a K, &'a V)>>(o: &mut String, items: I) {
        o.push_str("{\"__dict__\":[");
        let mut first = true;
        for (k, v) in items {
            if !first { o.push(','); }
            first = false;
            o.push('[');
            k.enc(o);
            o.push(',');
            v.enc(o);
            o.push(']');
        }
        o.push_str("]}");
    }
    impl<K: Enc, V: Enc, S> Enc for std::collections::HashMap<K, V, S> {
        fn enc(&self, o: &mut String) { pairs(o, self.iter()); }
    }
    impl<K: Enc, V: Enc> Enc for std::collections::BTreeMap<K, V> {
        fn enc(&self, o: &mut String) { pairs(o, self.iter()); }
    }
    macro_rules! tuples {
        ($(($($n:tt $t:ident),+))*) => { $(impl<$($t: Enc),+> Enc for ($($t,)+) {
            fn enc(&self, o: &mut String) {
                o.push_str("{\"__tuple__\":[");
                let mut first = true;
                $( if !first { o.push(','); } first = false; self.$n.enc(o); )+
                let _ = first;
                o.push_str("]}");
            }
        })* }
    }
    tuples!((0 A) (0 A, 1 B) (0 A, 1 B, 2 C) (0 A, 1 B, 2 C, 3 D) (0 A, 1 B, 2 C, 3 D, 4 E)
            (0 A, 1 B, 2 C, 3 D, 4 E, 5 F) (0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G)
            (0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H) (0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I)
            (0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I, 9 J));
    pub fn emit(out: &mut std::fs::File, line: &str) {
        use std::io::Write;
        let _ = out.write_all(line.as_bytes());
    }
    pub fn answer<T: Enc>(seq: usize, r: std::thread::Result<T>) -> String {
        match r {
            Ok(v) => {
                let mut o = format!("{{\"seq\":{},\"ok\":", seq);
                v.enc(&mut o);
                o.push_str("}\n");
                o
            }
            Err(_) => format!("{{\"seq\":{},\"exc\":\"Panic\"}}\n", seq),
        }
    }
}
"""


def harness(entry: str, calls: list[list[tuple]]) -> str:
    body = []
    for seq, args in enumerate(calls):
        decls = "".join(f"        let sbx_a{i}: {type_name(t)} = {literal(v, t)};\n" for i, (v, t) in enumerate(args))
        names = ", ".join(f"sbx_a{i}" for i in range(len(args)))
        body.append(f"    let sbx_r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {{\n{decls}"
                    f"        {entry}({names})\n    }}));\n"
                    f"    sbx_harness::emit(&mut sbx_out, &sbx_harness::answer({seq}, sbx_r));\n")
    return (LIBRARY + "\nfn main() {\n    use std::os::unix::io::FromRawFd;\n"
            "    let mut sbx_out = unsafe { std::fs::File::from_raw_fd(3) };\n" + "".join(body) + "}\n")
