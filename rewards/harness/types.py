"""Python type annotations, as MultiPL-E and MBXP take them from the Python originals, and values checked against them.

A signature names each parameter's type and the return type in Python's annotation syntax (`List[int]`,
`Tuple[int, str]`, `Dict[str, float]`, `Optional[int]`, `Set[int]`, `Any`, lower-case generics too). Only these
shapes are understood; anything else is a ValueError that names it.
"""

from __future__ import annotations

import ast
import functools
import math
from dataclasses import dataclass

SCALARS = ("int", "float", "bool", "str", "none", "any")
_NAMES = {"int": "int", "float": "float", "bool": "bool", "str": "str", "None": "none", "Any": "any"}
_GENERIC = {"List": "list", "list": "list", "Tuple": "tuple", "tuple": "tuple", "Dict": "dict", "dict": "dict",
            "Optional": "optional", "Set": "set", "set": "set"}


@dataclass(frozen=True)
class T:
    """A type: kind is a scalar (SCALARS) or list/tuple/dict/optional/set with `args`."""

    kind: str
    args: tuple[T, ...] = ()

    def __str__(self) -> str:
        names = {"none": "None", "any": "Any", "list": "List", "tuple": "Tuple", "dict": "Dict",
                 "optional": "Optional", "set": "Set"}
        name = names.get(self.kind, self.kind)
        return f"{name}[{', '.join(map(str, self.args))}]" if self.args else name


@functools.lru_cache(maxsize=1024)
def parse_type(text: str) -> T:
    """'List[Tuple[int, str]]' -> T('list', (T('tuple', (T('int'), T('str'))),))."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"type {text!r} is not a Python annotation") from None
    return _from_ast(tree, text)


def _from_ast(node: ast.expr, text: str) -> T:
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return T(_NAMES[node.id])
    if isinstance(node, ast.Constant) and node.value is None:
        return T("none")
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "typing":
        return _from_ast(ast.Name(node.attr), text)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in _GENERIC:
        kind = _GENERIC[node.value.id]
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if kind == "tuple" and len(inner) == 2 and isinstance(inner[1], ast.Constant) and inner[1].value is ...:
            return T("list", (_from_ast(inner[0], text),))  # Tuple[int, ...] is a sequence of any length
        args = tuple(_from_ast(a, text) for a in inner)
        arity = {"list": 1, "optional": 1, "set": 1, "dict": 2}.get(kind)
        if arity is not None and len(args) != arity:
            raise ValueError(f"type {text!r}: {node.value.id} takes {arity} type argument(s)")
        return T(kind, args)
    raise ValueError(f"type {text!r}: only int, float, bool, str, None, Any and List/Tuple/Dict/Optional/Set of "
                     f"them are understood (as MultiPL-E translates); {ast.unparse(node)!r} is not")


@dataclass(frozen=True)
class Signature:
    """Parameter types and return type of the function under test, as Python annotations."""

    params: tuple[str, ...]
    returns: str

    def __post_init__(self):
        for text in (*self.params, self.returns):
            parse_type(text)

    @property
    def param_types(self) -> tuple[T, ...]:
        return tuple(parse_type(p) for p in self.params)

    @property
    def return_type(self) -> T:
        return parse_type(self.returns)

    def to_dict(self) -> dict:
        return {"params": list(self.params), "returns": self.returns}

    @classmethod
    def from_dict(cls, d) -> Signature:
        if not isinstance(d, dict) or not isinstance(d.get("params"), list) or not isinstance(d.get("returns"), str) \
                or not all(isinstance(p, str) for p in d["params"]):
            raise ValueError('tests.signature: must be {"params": ["List[int]", ...], "returns": "int"} '
                             "(Python annotations of the parameters and the result)")
        return cls(tuple(d["params"]), d["returns"])


def check(value, t: T, where: str = "value"):
    """value (a decoded Python test value) if it fits t; ValueError saying where it does not. An int fits a float."""
    k = t.kind
    ok = (k == "any" or (k == "int" and type(value) is int) or (k == "float" and type(value) in (int, float))
          or (k == "bool" and type(value) is bool) or (k == "str" and type(value) is str)
          or (k == "none" and value is None) or (k == "optional" and value is None))
    if ok:
        return value
    if k == "optional":
        return check(value, t.args[0], where)
    if k in ("list", "set") and type(value) in ((list, tuple) if k == "list" else (set, frozenset, list)):
        for i, v in enumerate(value):
            check(v, t.args[0], f"{where}[{i}]")
        return value
    if k == "tuple" and type(value) in (tuple, list) and len(value) == len(t.args):
        for i, (v, a) in enumerate(zip(value, t.args, strict=True)):
            check(v, a, f"{where}[{i}]")
        return value
    if k == "dict" and type(value) is dict:
        for key, v in value.items():
            check(key, t.args[0], f"{where} key {key!r}")
            check(v, t.args[1], f"{where}[{key!r}]")
        return value
    raise ValueError(f"{where}: {_short(value)} is not a {t}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finite(x: float) -> bool:
    return math.isfinite(x)
