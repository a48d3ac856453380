"""Go harness. Types follow MultiPL-E's Go translation: int -> int, float -> float64, bool -> bool, str -> string,
List -> slice, Tuple -> []interface{}, Dict -> map, Any -> interface{}; Go has no Optional (MultiPL-E drops those
problems, and so does this harness), and no set type. The harness is a file of its own in package main."""

from __future__ import annotations

import math

from rewards.harness.types import T

NAME = "go"
NEEDS_TYPES = True
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def type_name(t: T) -> str:
    k = t.kind
    simple = {"int": "int", "float": "float64", "bool": "bool", "str": "string", "any": "interface{}",
              "tuple": "[]interface{}"}
    if k in simple:
        return simple[k]
    if k == "list":
        return f"[]{type_name(t.args[0])}"
    if k == "dict":
        return f"map[{type_name(t.args[0])}]{type_name(t.args[1])}"
    raise ValueError(f"Go tests cannot take a value of type {t} (MultiPL-E's Go has no form for it)")


def string_literal(s: str) -> str:
    out = []
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError("a lone surrogate has no Go string literal")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def literal(value, t: T) -> str:
    k = t.kind
    if k == "any":
        return _untyped(value)
    if k == "int":
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"{value} does not fit Go's int")
        return f"int({value})"
    if k == "float":
        x = float(value)
        if math.isnan(x):
            return "math.NaN()"
        if math.isinf(x):
            return "math.Inf(1)" if x > 0 else "math.Inf(-1)"
        return f"float64({x!r})"
    if k == "bool":
        return "true" if value else "false"
    if k == "str":
        return string_literal(value)
    if k == "list":
        return f"{type_name(t)}{{{', '.join(literal(v, t.args[0]) for v in value)}}}"
    if k == "tuple":
        return f"[]interface{{}}{{{', '.join(literal(v, a) for v, a in zip(value, t.args, strict=True))}}}"
    if k == "dict":
        pairs = ", ".join(f"{literal(key, t.args[0])}: {literal(v, t.args[1])}" for key, v in value.items())
        return f"{type_name(t)}{{{pairs}}}"
    type_name(t)  # raises with the reason
    raise ValueError(f"Go tests cannot take a value of type {t}")


def _untyped(value) -> str:
    if type(value) is bool:
        return literal(value, T("bool"))
    if type(value) is int:
        return literal(value, T("int"))
    if type(value) is float:
        return literal(value, T("float"))
    if type(value) is str:
        return literal(value, T("str"))
    if type(value) in (list, tuple):
        return "[]interface{}{" + ", ".join(map(_untyped, value)) + "}"
    raise ValueError(f"an untyped Go test value cannot be a {type(value).__name__}")


def expected(value, t: T):
    k = t.kind
    if k == "float":
        return float(value)
    if k == "list":
        return [expected(v, t.args[0]) for v in value]
    if k == "tuple":
        return [expected(v, a) for v, a in zip(value, t.args, strict=True)]  # a []interface{} prints as a list
    if k == "dict":
        return {expected(key, t.args[0]): expected(v, t.args[1]) for key, v in value.items()}
    if k == "any":
        return [expected(v, T("any")) for v in value] if type(value) in (list, tuple) else value
    if k in ("int", "bool", "str"):
        return value
    type_name(t)
    raise ValueError(f"Go functions cannot return a value of type {t}")


LIBRARY = r"""package main

import (
	"math"
	"os"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

func sbxString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s { // invalid UTF-8 reads as U+FFFD
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte("0123456789abcdef"[r>>4])
			b.WriteByte("0123456789abcdef"[r&15])
		default:
			var buf [utf8.UTFMax]byte
			b.Write(buf[:utf8.EncodeRune(buf[:], r)])
		}
	}
	b.WriteByte('"')
}

func sbxReal(b *strings.Builder, f float64, bits int) {
	if math.IsNaN(f) {
		b.WriteString(`{"__float__":"nan"}`)
		return
	}
	if math.IsInf(f, 0) {
		if f > 0 {
			b.WriteString(`{"__float__":"inf"}`)
		} else {
			b.WriteString(`{"__float__":"-inf"}`)
		}
		return
	}
	s := strconv.FormatFloat(f, 'g', -1, bits)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	b.WriteString(s)
}

func sbxEnc(b *strings.Builder, v reflect.Value, depth int) {
	if depth > 64 {
		b.WriteString(`{"__unserialisable__":"deep"}`)
		return
	}
	switch v.Kind() {
	case reflect.Invalid:
		b.WriteString("null")
	case reflect.Bool:
		if v.Bool() {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		b.WriteString(strconv.FormatInt(v.Int(), 10))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		b.WriteString(strconv.FormatUint(v.Uint(), 10))
	case reflect.Float32:
		sbxReal(b, v.Float(), 32)
	case reflect.Float64:
		sbxReal(b, v.Float(), 64)
	case reflect.String:
		sbxString(b, v.String())
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.IsNil() {
			b.WriteString("[]")
			return
		}
		b.WriteByte('[')
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			sbxEnc(b, v.Index(i), depth+1)
		}
		b.WriteByte(']')
	case reflect.Map:
		b.WriteString(`{"__dict__":[`)
		iter := v.MapRange()
		first := true
		for iter.Next() {
			if !first {
				b.WriteByte(',')
			}
			first = false
			b.WriteByte('[')
			sbxEnc(b, iter.Key(), depth+1)
			b.WriteByte(',')
			sbxEnc(b, iter.Value(), depth+1)
			b.WriteByte(']')
		}
		b.WriteString("]}")
	case reflect.Ptr, reflect.Interface:
		if v.IsNil() {
			b.WriteString("null")
		} else {
			sbxEnc(b, v.Elem(), depth+1)
		}
	default:
		name := strings.Map(func(r rune) rune {
			if r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
				return r
			}
			return -1
		}, v.Type().String())
		if len(name) > 60 {
			name = name[:60]
		}
		b.WriteString(`{"__unserialisable__":"` + name + `"}`)
	}
}

var sbxOut = os.NewFile(3, "sbx-results")

func sbxCall(seq int, f func() interface{}) {
	var b strings.Builder
	func() {
		defer func() {
			if r := recover(); r != nil {
				b.Reset()
				b.WriteString(`{"seq":` + strconv.Itoa(seq) + `,"exc":"Panic"}`)
			}
		}()
		r := f()
		b.WriteString(`{"seq":` + strconv.Itoa(seq) + `,"ok":`)
		sbxEnc(&b, reflect.ValueOf(r), 0)
		b.WriteString("}")
	}()
	b.WriteString("\n")
	sbxOut.Write([]byte(b.String()))
}
"""


def harness(entry: str, calls: list[list[tuple]]) -> str:
    body = []
    for seq, args in enumerate(calls):
        decls = "".join(f"\t\tvar sbx_a{i} {type_name(t)} = {literal(v, t)}\n" for i, (v, t) in enumerate(args))
        names = ", ".join(f"sbx_a{i}" for i in range(len(args)))
        body.append(f"\tsbxCall({seq}, func() interface{{}} {{\n{decls}\t\treturn {entry}({names})\n\t}})\n")
    return LIBRARY + "\nfunc main() {\n" + "".join(body) + "}\n"
