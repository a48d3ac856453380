"""Function-call tests in other languages: type and value translation, and generated harnesses compiled for real."""

import json
import math

import pytest

from rewards import spec
from rewards.harness import TARGETS, calls_and_expected, cpp, go, java, javascript, rust
from rewards.harness.types import Signature, T, check, parse_type
from rewards.sandbox import wire
from tests.rewards.languages import missing, params

# (annotation, parsed)
TYPES = [
    ("int", T("int")),
    ("List[int]", T("list", (T("int"),))),
    ("list[str]", T("list", (T("str"),))),  # lower-case generics
    ("Tuple[int, str]", T("tuple", (T("int"), T("str")))),
    ("Tuple[int, ...]", T("list", (T("int"),))),  # a homogeneous tuple of any length is a list
    ("Dict[str, List[float]]", T("dict", (T("str"), T("list", (T("float"),))))),
    ("Optional[bool]", T("optional", (T("bool"),))),
    ("typing.Any", T("any")),
    ("None", T("none")),
]


@pytest.mark.parametrize("text,parsed", TYPES)
def test_parse_type(text, parsed):
    assert parse_type(text) == parsed
    assert parse_type(str(parsed)) == parsed  # prints back as an annotation


@pytest.mark.parametrize("text", ["Union[int, str]", "Callable[[int], int]", "List[int, str]", "int +", "MyClass"])
def test_unknown_types_are_refused(text):
    with pytest.raises(ValueError, match="type"):
        parse_type(text)


# (value, annotation, fits)
CHECKS = [
    (3, "int", True),
    (True, "int", False),  # a bool is not an int
    (3, "float", True),  # an int fits a float
    ("3", "int", False),
    ([1, 2], "List[int]", True),
    ([1, "2"], "List[int]", False),
    ((1, "a"), "Tuple[int, str]", True),
    ((1,), "Tuple[int, str]", False),  # wrong length
    ({"a": [1.5]}, "Dict[str, List[float]]", True),
    ({1: [1.5]}, "Dict[str, List[float]]", False),
    (None, "Optional[int]", True),
    ([None, 1], "List[Optional[int]]", True),
    (object(), "Any", True),
]


@pytest.mark.parametrize("value,text,fits", CHECKS)
def test_values_checked_against_types(value, text, fits):
    if fits:
        assert check(value, parse_type(text)) is value
    else:
        with pytest.raises(ValueError, match="is not a"):
            check(value, parse_type(text))


# (module, value, annotation, literal): MultiPL-E's conventions, written as each language reads them
LITERALS = [
    (cpp, [1, -2], "List[int]", "std::vector<long>{1L, -2L}"),
    (cpp, -(2**63), "int", "(-9223372036854775807L - 1)"),
    (cpp, 0.5, "float", "0.5f"),
    (cpp, 'a"\\\n?é', "str", r'std::string("a\"\\\012\077\303\251", 7)'),
    (cpp, {"a": 1}, "Dict[str, int]", 'std::map<std::string, long>{{std::string("a", 1), 1L}}'),
    (cpp, (1, "x"), "Tuple[int, str]", 'std::tuple<long, std::string>{1L, std::string("x", 1)}'),
    (cpp, None, "Optional[int]", "std::nullopt"),
    (java, [1, 2], "List[int]",
     "new java.util.ArrayList<java.lang.Long>(java.util.Arrays.asList((java.lang.Long) 1L, (java.lang.Long) 2L))"),
    (java, [], "List[int]", "new java.util.ArrayList<java.lang.Long>()"),
    (java, 3, "float", "3.0f"),
    (java, "a\u0001\\u0041", "str", r'"a\001\\u0041"'),  # \u escapes would be read before the literal
    (java, 4, "Optional[int]", "java.util.Optional.<java.lang.Long>of(4L)"),
    (javascript, None, "Optional[int]", "undefined"),
    (javascript, {1: (2, 3)}, "Dict[int, Tuple[int, int]]", '{"1": [2, 3]}'),
    (javascript, {1, 2}, "Set[int]", "new Set([1, 2])"),
    (javascript, float("inf"), "float", "Infinity"),
    (rust, [1.0], "List[float]", "vec![1.0f64]"),
    (rust, [], "List[int]", "Vec::<isize>::new()"),
    (rust, (1,), "Tuple[int]", "(1isize,)"),
    (rust, "q\"\t", "str", 'String::from("q\\"\\u{9}")'),
    (rust, 5, "Optional[int]", "Some(5isize)"),
    (go, [[1]], "List[List[int]]", "[][]int{[]int{int(1)}}"),
    (go, (1, "a"), "Tuple[int, str]", '[]interface{}{int(1), "a"}'),
    (go, {"k": True}, "Dict[str, bool]", 'map[string]bool{"k": true}'),
    (go, float("nan"), "float", "math.NaN()"),
]


@pytest.mark.parametrize("module,value,text,lit", LITERALS)
def test_literals(module, value, text, lit):
    assert module.literal(value, parse_type(text)) == lit


# (module, annotation, reason): what each translation has no form for
UNSUPPORTED = [
    (java, "Tuple[int, int]", "javatuples"),
    (go, "Optional[int]", "no form"),
    (cpp, "Any", "no form"),
    (rust, "Any", "no form"),
]


@pytest.mark.parametrize("module,text,reason", UNSUPPORTED)
def test_types_a_target_lacks_are_refused(module, text, reason):
    with pytest.raises(ValueError, match=reason):
        module.literal(None, parse_type(text))


def test_values_beyond_a_targets_integers_are_refused():
    for module in (cpp, java, rust, go):
        with pytest.raises(ValueError, match="does not fit"):
            module.literal(2**64, T("int"))
    with pytest.raises(ValueError, match="exact integers"):
        javascript.literal(2**60, T("int"))


# (language, return annotation, Python expected value, what a correct function's printed result reads back as)
EXPECTED = [
    ("cpp", "Tuple[int, float]", (1, 2), (1, 2.0)),  # a float result prints as a float
    ("rust", "List[Tuple[int, str]]", [(1, "a")], [(1, "a")]),
    ("go", "Tuple[int, str]", (1, "a"), [1, "a"]),  # []interface{} prints as a list
    ("javascript", "Dict[int, Tuple[int, int]]", {1: (2, 3)}, {"1": [2, 3]}),  # object keys are strings
    ("javascript", "Optional[int]", None, None),
    ("java", "Set[int]", {1, 2}, {1, 2}),
    ("java", "List[Any]", [1, "a", [2.5]], [1, "a", [2.5]]),
]


@pytest.mark.parametrize("lang,ret,value,reads_back", EXPECTED)
def test_expected_values_as_the_target_prints_them(lang, ret, value, reads_back):
    got = TARGETS[lang].expected(value, parse_type(ret))
    assert wire.encode(got) == wire.encode(reads_back)


def _call_spec(lang: str, entry: str, params_: list, returns: str, cases: list) -> spec.CallSpec:
    return spec.parse(json.dumps({"kind": "call", "language": lang, "entry_point": entry,
                                  "signature": {"params": params_, "returns": returns},
                                  "cases": [{"args": wire.encode(list(a)), "expected": wire.encode(e)}
                                            for a, e in cases]}))


# (spec fields, message): call specs in other languages are checked when read
BAD_SPECS = [
    ({"language": "cpp"}, "need the parameter and return types"),  # no signature
    ({"language": "rust", "signature": {"params": ["int"], "returns": "int"}}, "2 arguments for 1 parameters"),
    ({"language": "go", "signature": {"params": ["int", "str"], "returns": "int"}}, "is not a str"),
    ({"language": "java", "signature": {"params": ["int", "int"], "returns": "Tuple[int, int]"}}, "javatuples"),
    ({"language": "cpp", "signature": {"params": "int", "returns": "int"}}, "tests.signature"),
]


@pytest.mark.parametrize("fields,message", BAD_SPECS)
def test_call_specs_in_other_languages_are_checked_when_read(fields, message):
    raw = {"kind": "call", "entry_point": "add", "cases": [{"args": [1, 2], "expected": 3}], **fields}
    with pytest.raises(ValueError, match=message):
        spec.parse(json.dumps(raw))


def test_call_spec_round_trips_with_language_and_signature():
    sp = _call_spec("rust", "add", ["int", "int"], "int", [((1, 2), 3)])
    assert spec.parse(spec.dumps(sp)) == sp and sp.signature == Signature(("int", "int"), "int")
    js = spec.parse(json.dumps({"kind": "call", "language": "js", "entry_point": "f",
                                "cases": [{"args": [[1, 2]], "expected": 2}]}))
    assert js.language == "javascript" and js.signature is None  # JavaScript needs no types
    java_method = spec.parse(json.dumps({"kind": "call", "language": "java", "entry_point": "Solution.add",
                                         "signature": {"params": ["int"], "returns": "int"},
                                         "cases": [{"args": [1], "expected": 1}]}))
    assert java_method.entry_point == "Solution.add"


# Every parameter type each translation has, echoed back through the harness: literals in, encoder out.
STRINGS = 'quote " backslash \\ newline \n tab \t nul \0 é 😀'
ECHO = {
    "cpp": ("#include <tuple>\ntemplate <class... A> auto echo(A... a) { return std::make_tuple(a...); }\n",
            ["int", "float", "bool", "str", "List[List[int]]", "Dict[str, List[float]]", "Optional[int]",
             "Tuple[int, str]", "Set[int]", "List[bool]"], "tuple"),
    "rust": ("fn echo<A, B, C, D, E, F, G, H, I>(a: A, b: B, c: C, d: D, e: E, f: F, g: G, h: H, i: I)\n"
             "    -> (A, B, C, D, E, F, G, H, I) {\n    (a, b, c, d, e, f, g, h, i)\n}\n",
             ["int", "float", "bool", "str", "List[List[int]]", "Dict[str, List[float]]", "Optional[int]",
              "Tuple[int, str]", "Set[int]"], "tuple"),
    "java": ("class Problem {\n    static Object[] echo(Object... a) { return a; }\n}\n",
             ["int", "float", "bool", "str", "List[List[int]]", "Dict[str, List[float]]", "Optional[int]",
              "Set[int]"], "list"),
    "go": ("package main\n\nfunc echo(a ...interface{}) []interface{} { return a }\n",
           ["int", "float", "bool", "str", "List[List[int]]", "Dict[str, List[float]]", "Tuple[int, str]",
            "Dict[int, bool]"], "tuple"),
    "javascript": ("function echo(...a) { return a; }\n",
                   ["int", "float", "bool", "str", "List[List[int]]", "Dict[str, List[float]]", "Optional[int]",
                    "Tuple[int, str]", "Set[int]"], "tuple"),
}
VALUES = {
    "int": [-(2**63), 2**53], "float": [0.5, -1.25e-3], "bool": [True, False], "str": [STRINGS, ""],
    "List[List[int]]": [[[1, 2], []], []], "Dict[str, List[float]]": [{"a": [1.5, -2.0], "": []}, {}],
    "Optional[int]": [None, 7], "Tuple[int, str]": [(1, "x"), (-5, "")], "Set[int]": [{3, 1}, set()],
    "Dict[int, bool]": [{1: True, -2: False}, {}], "List[bool]": [[True, False], []],
}
SAFE_DIV = {
    "cpp": "#include <stdexcept>\nlong safe_div(long a, long b) {\n  if (b == 0) throw std::runtime_error(\"zero\");\n"
           "  return a / b;\n}\n",
    "rust": "fn safe_div(a: isize, b: isize) -> isize { a / b }\n",
    "java": "class Problem {\n    public static long safeDiv(long a, long b) { return a / b; }\n}\n",
    "go": "package main\n\nfunc safe_div(a int, b int) int { return a / b }\n",
    "javascript": "function safe_div(a, b) {\n  if (b === 0) throw new Error('zero');\n"
                  "  return Math.trunc(a / b);\n}\n",
}
DIV_CASES = [((6, 3), 2), ((1, 0), 0), ((8, 2), 4)]


@pytest.fixture(scope="module")
def harness_outcomes(evaluator):
    programs, tests, labels = [], [], []
    for lang, (code, types, ret) in ECHO.items():
        if missing(lang):
            continue
        # int extremes beyond 2**53 only where integers are 64-bit
        cases = [(tuple(VALUES[t][i] if not (lang == "javascript" and t == "int") else (-1) ** i * (2**53 - 1)
                        for t in types), None) for i in range(2)]
        returns = f"Tuple[{', '.join(types)}]" if ret == "tuple" else "List[Any]"
        sp = _call_spec(lang, "echo", types, returns, [(args, args if ret == "tuple" else list(args))
                                                         for args, _ in cases])
        div = "safeDiv" if lang == "java" else "safe_div"
        wrong = SAFE_DIV[lang].replace("a / b", "a / b + 1")
        for kind, code_, sp_ in [("echo", code, sp),
                                 ("div", SAFE_DIV[lang], _call_spec(lang, div, ["int", "int"], "int", DIV_CASES)),
                                 ("mutant", wrong, _call_spec(lang, div, ["int", "int"], "int", DIV_CASES)),
                                 ("missing", code, _call_spec(lang, div, ["int", "int"], "int", DIV_CASES))]:
            programs.append(code_)
            tests.append(sp_)
            labels.append((lang, kind))
    return dict(zip(labels, evaluator.evaluate(programs, tests), strict=True))


@pytest.mark.parametrize("lang", params())
def test_every_type_round_trips_through_the_harness(harness_outcomes, lang):
    out = harness_outcomes[(lang, "echo")]
    assert out.tests == ["passed", "passed"], (out.detail, out.stderr[:2000])


@pytest.mark.parametrize("lang", params())
def test_an_exception_fails_its_own_call_only(harness_outcomes, lang):
    out = harness_outcomes[(lang, "div")]
    assert out.tests == ["passed", "runtime_error", "passed"], (out.detail, out.stderr[:2000])


@pytest.mark.parametrize("lang", params())
def test_wrong_results_and_missing_entry_points(harness_outcomes, lang):
    # a / b + 1: one too many, and still an exception on the division by zero
    assert harness_outcomes[(lang, "mutant")].tests == ["wrong_answer", "runtime_error", "wrong_answer"]
    # the harness calls a function the program lacks: the compiler says so (JavaScript only finds out at the call)
    want = "runtime_error" if lang == "javascript" else "compile_error"
    assert harness_outcomes[(lang, "missing")].category == want


def test_calls_and_expected_checks_before_anything_runs():
    calls, expected = calls_and_expected("cpp", Signature(("List[int]",), "float"),
                                         [spec.CallCase([[1, 2]], 3)])
    assert calls == [[([1, 2], T("list", (T("int"),)))]] and expected == [3.0]
    assert math.isnan(wire.decode(calls_and_expected("javascript", None, [spec.CallCase([], math.nan)])[1][0]))
