"""Rewards pick the language from the row (spec or `language` column) or the answer's fence; code comes from the
blocks of that language."""

import json

import pytest

from rewards import spec
from rewards.extract import declares, extract_code, fence_language, has_code_block, program_for
from rewards.multilingual import prepare_row, resolve_language, row_language
from rewards.shaping import FormatReward
from rewards.unit_tests import UnitTestReward
from tests.rewards.languages import missing

CPP = "long add(long a, long b) {\n  return a + b;\n}\n"
RS = "fn add(a: isize, b: isize) -> isize {\n    a + b\n}\n"

# (completion, entry point, language, extracted)
EXTRACT = [
    (f"```cpp\n{CPP}```", "add", "cpp", CPP),  # tagged block
    (f"```c++\n{CPP}```", "add", "cpp", CPP),  # another tag of the same language
    (f"```python\ndef add(a, b): pass\n```\n```cpp\n{CPP}```", "add", "cpp", CPP),  # the Python block ignored
    (f"```cpp\nint helper() {{ return 1; }}\n```\n```cpp\n{CPP}```\n```cpp\nint x = 1;\n```", "add", "cpp", CPP),
    (f"```\n{RS}```", "add", "rust", RS),  # untagged block when none is tagged
    (f"```rust\n{RS}```", "add", "go", ""),  # no Go code: nothing (the Rust block is not Go)
    (CPP, "add", "cpp", CPP),  # no fence: the text itself
    ("```java\nclass Problem {\n    static long add(long a, long b) { return a + b; }\n}\n```", "Problem.add", "java",
     "class Problem {\n    static long add(long a, long b) { return a + b; }\n}\n"),  # Class.method names the method
]


@pytest.mark.parametrize("completion,entry_point,language,code", EXTRACT)
def test_extract_code_in_other_languages(completion, entry_point, language, code):
    assert extract_code(completion, entry_point, language) == code


def test_fence_language_and_code_blocks():
    assert fence_language("```python\nx\n```\n```go\npackage main\n```") == "go"  # the last known tag
    assert fence_language("```bash\nls\n```") is None and fence_language("no code") is None
    assert has_code_block("```rs\nfn main() {}\n```", "rust") and not has_code_block("```rs\nx\n```", "python")
    assert has_code_block("```\nx = 1\n```") and not has_code_block("```\nx\n```", "cpp")  # untagged is Python


# (text, entry point, language, declares it)
DECLARES = [
    ("long add(long a, long b) {", "add", "cpp", True),
    ("x = add(1, 2);", "add", "cpp", False),  # a call is not a definition
    ("    public static long add(long a, long b) {", "Problem.add", "java", True),
    ("const add = (a, b) => a + b;", "add", "javascript", True),
    ("function add(a, b) {", "add", "javascript", True),
    ("fn add(a: isize) -> isize {", "add", "rust", True),
    ("func add(a int) int {", "add", "go", True),
    ("func adder(a int) int {", "add", "go", False),
]


@pytest.mark.parametrize("text,entry_point,language,found", DECLARES)
def test_declares(text, entry_point, language, found):
    assert declares(text, entry_point, language) is found


def test_a_base_model_continues_a_stub_in_its_language():
    """MultiPL-E's prompts end inside the function; the completion is the rest of it."""
    stub = "#include <bits/stdc++.h>\n// Add two numbers.\nlong add(long a, long b) {\n"
    assert program_for(stub, "  return a + b;\n}\n", "add", "cpp") == stub + "  return a + b;\n}\n"
    assert program_for(stub, f"```cpp\n{CPP}```", "add", "cpp") == CPP  # an Instruct answer stands alone
    assert program_for("Write add.", CPP, "add", "cpp") == CPP  # a prose prompt is no stub


CALL_CPP = spec.parse(json.dumps({"kind": "call", "entry_point": "add", "language": "cpp",
                                  "signature": {"params": ["int", "int"], "returns": "int"},
                                  "cases": [{"args": [1, 2], "expected": 3}]}))
CALL_TYPED = spec.parse(json.dumps({"kind": "call", "entry_point": "add",
                                    "signature": {"params": ["int", "int"], "returns": "int"},
                                    "cases": [{"args": [1, 2], "expected": 3}]}))
CALL_UNTYPED = spec.parse(json.dumps({"kind": "call", "entry_point": "add",
                                      "cases": [{"args": [1, 2], "expected": 3}]}))
STDIO_ANY = spec.StdioSpec((spec.StdioCase("1 2\n", "3\n"),))
ASSERTS = spec.AssertSpec("add", asserts=("assert add(1, 2) == 3",))

# (spec, completion, row's language column, chosen language)
RESOLVE = [
    (CALL_CPP, "```python\ndef add(a, b): return a + b\n```", None, "cpp"),  # the spec's own language wins
    (STDIO_ANY, "```python\nprint(3)\n```", "rust", "rust"),  # then the row's column
    (STDIO_ANY, "```go\npackage main\n```", None, "go"),  # stdio tests run in the answer's language
    (STDIO_ANY, "print(3)", None, "python"),  # no fence: Python
    (CALL_TYPED, f"```cpp\n{CPP}```", None, "cpp"),  # a signature lets a call test run in C++
    (CALL_UNTYPED, f"```cpp\n{CPP}```", None, "python"),  # without one it cannot: the row is Python's
    (CALL_UNTYPED, "```js\nfunction add(a, b) { return a + b; }\n```", None, "javascript"),  # JS needs no types
    (ASSERTS, f"```cpp\n{CPP}```", "cpp", "python"),  # assert tests are Python code
]


@pytest.mark.parametrize("sp,completion,row_lang,chosen", RESOLVE)
def test_resolve_language(sp, completion, row_lang, chosen):
    assert resolve_language(sp, completion, row_lang) == chosen
    resolved, _ = prepare_row("", completion, sp, row_lang)
    if not isinstance(sp, spec.AssertSpec):
        assert (resolved.language or "python") == chosen


def test_row_language_column():
    assert row_language(["C++", None, ""], 0) == "cpp" and row_language(["C++", None, ""], 1) is None
    assert row_language(None, 3) is None
    assert row_language(["any"], 0) is None  # the answer's language decides
    with pytest.raises(ValueError, match="language column"):
        row_language(["cobol"], 0)


def test_format_reward_follows_the_row_language():
    fmt = FormatReward()
    completions = [f"```cpp\n{CPP}```", f"```cpp\n{CPP}```", "```python\nx = 1\n```"]
    assert fmt(["p"] * 3, completions, language=["cpp", None, "python"]) == [1.0, 0.0, 1.0]
    assert fmt(["p"], ["```python\nx\n```"]) == [1.0]  # no column: Python
    assert fmt(["p"] * 2, ["```go\npackage main\n```", "```bash\nls\n```"], language=["any"] * 2) == [1.0, 0.0]


@pytest.fixture(scope="module")
def reward():
    r = UnitTestReward(timeout=3.0)
    yield r
    r.close()


def test_unit_test_reward_in_other_languages(reward):
    if missing("cpp") or missing("javascript"):
        pytest.skip(f"needs g++ and node: {missing('cpp') or missing('javascript')}")
    stdio = spec.dumps(spec.StdioSpec((spec.StdioCase("1 2\n", "3\n"), spec.StdioCase("5 5\n", "10\n"))))
    js_sum = ("```js\nconst v = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);\n"
              "console.log(v[0] + v[1]);\n```")
    rows = [
        (f"```cpp\n{CPP}```", spec.dumps(CALL_CPP), None, 1.0),  # the spec says C++
        (f"```cpp\n{CPP.replace('a + b', 'a - b')}```", spec.dumps(CALL_CPP), None, 0.0),  # wrong
        ("```cpp\nlong add(long a, long b) { return a + }\n```", spec.dumps(CALL_CPP), None, 0.0),  # compile error
        (js_sum, stdio, None, 1.0),  # the fence says JavaScript
        (js_sum, stdio, "javascript", 1.0),  # so does the column
        (js_sum, stdio, "python", 0.0),  # the column says Python: JavaScript does not run as Python
        ("```python\na, b = map(int, input().split())\nprint(a + b)\n```", stdio, None, 1.0),  # Python as before
    ]
    out = reward.detailed(["p"] * len(rows), [r[0] for r in rows], tests=[r[1] for r in rows],
                          language=[r[2] for r in rows])
    assert out.scores == [r[3] for r in rows], [(o.category, o.detail) for o in out.details]
    assert [o.extra["language"] for o in out.details] == ["cpp", "cpp", "cpp", "javascript", "javascript", "python",
                                                          "python"]
    assert out.details[2].category == "compile_error"
