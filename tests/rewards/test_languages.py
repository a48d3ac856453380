"""The sandbox's language layer: stdin/stdout programs in every language, compile errors, the compile cache."""

import pytest

from rewards import spec
from rewards.sandbox import Evaluator, Job, Limits, Sandbox
from rewards.sandbox._cgroups import Cgroups
from rewards.sandbox.compile_cache import CompileCache, Compiled
from rewards.sandbox.jobs import Run
from rewards.sandbox.languages import LANGUAGES, canonical_language, language
from rewards.sandbox.native import COMPILE_TIMEOUT, compile_all, plan
from rewards.sandbox.verdict import stdout_matches
from tests.rewards.languages import NATIVE, missing, params

# One program per language that reads two integers and prints their sum; SUM[lang].replace(*MUTATE[lang]) prints
# their product instead, SUM[lang][:-12] does not compile.
SUM = {
    "cpp": '#include <cstdio>\nint main() {\n  long a, b;\n  if (scanf("%ld %ld", &a, &b) != 2) return 1;\n'
           '  printf("%ld\\n", a + b);\n  return 0;\n}\n',
    "java": "import java.util.*;\npublic class Main {\n  public static void main(String[] args) {\n"
            "    Scanner in = new Scanner(System.in);\n    long a = in.nextLong(), b = in.nextLong();\n"
            "    System.out.println(a + b);\n  }\n}\n",
    "javascript": 'const v = require("fs").readFileSync(0, "utf8").trim().split(/\\s+/).map(Number);\n'
                  "console.log(v[0] + v[1]);\n",
    "rust": "use std::io::Read;\nfn main() {\n    let mut s = String::new();\n"
            "    std::io::stdin().read_to_string(&mut s).unwrap();\n"
            "    let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();\n"
            '    println!("{}", v[0] + v[1]);\n}\n',
    "go": 'package main\n\nimport "fmt"\n\nfunc main() {\n\tvar a, b int64\n\tfmt.Scan(&a, &b)\n'
          "\tfmt.Println(a + b)\n}\n",
}
MUTATE = {"cpp": ("a + b", "a * b"), "java": ("a + b", "a * b"), "javascript": ("v[0] + v[1]", "v[0] * v[1]"),
          "rust": ("v[0] + v[1]", "v[0] * v[1]"), "go": ("a + b", "a * b")}
# A program that exits with status 3 after printing the right answer, and one that never ends.
EXIT3 = {
    "cpp": SUM["cpp"].replace("return 0;", "return 3;"),
    "java": SUM["java"].replace("System.out.println(a + b);", "System.out.println(a + b); System.exit(3);"),
    "javascript": SUM["javascript"] + "process.exitCode = 3;\n",
    "rust": SUM["rust"].replace('v[0] + v[1]);', 'v[0] + v[1]); std::process::exit(3);'),
    "go": SUM["go"].replace('import "fmt"', 'import (\n\t"fmt"\n\t"os"\n)').replace("fmt.Println(a + b)",
                                                                                   "fmt.Println(a + b)\n\tos.Exit(3)"),
}
LOOP = {
    "cpp": "int main() { volatile long x = 0; for (;;) x++; }\n",
    "java": "public class Main { public static void main(String[] a) { long x = 0; while (true) { x++; } } }\n",
    "javascript": "for (;;) {}\n",
    "rust": "fn main() { let mut x: u64 = 1; while x != 0 { x = x.wrapping_mul(3); } println!(\"{}\", x); }\n",
    "go": "package main\n\nfunc main() {\n\tx := 0\n\tfor {\n\t\tx++\n\t}\n}\n",
}
CASES = spec.StdioSpec((spec.StdioCase("1 2\n", "3\n"), spec.StdioCase("20 22\n", "42\n")))
RAN = [lang for lang in NATIVE if missing(lang) is None]


@pytest.fixture(scope="module")
def stdio_outcomes(evaluator):
    """Every language's variants in one batch (compiles run in parallel)."""
    programs, tests, labels = [], [], []
    for lang in RAN:
        sp = spec.StdioSpec(CASES.cases, language=lang)
        variants = {"canonical": SUM[lang], "mutant": SUM[lang].replace(*MUTATE[lang]), "broken": SUM[lang][:-12],
                    "exit3": EXIT3[lang], "loop": LOOP[lang]}
        for kind, code in variants.items():
            programs.append(code)
            tests.append(sp)
            labels.append((lang, kind))
    return dict(zip(labels, evaluator.evaluate(programs, tests), strict=True))


# (variant, expected category, tests passed)
VARIANTS = [
    ("canonical", "passed", 2),  # right output on both cases
    ("mutant", "wrong_answer", 0),  # product instead of sum
    ("broken", "compile_error", 0),  # truncated source: the compiler (node --check for JS) refuses it
    ("exit3", "runtime_error", 0),  # the right output, then a failing exit status: not a pass
    ("loop", "timeout", 0),  # runs past the limit
]


@pytest.mark.parametrize("lang", params())
@pytest.mark.parametrize("kind,category,passed", VARIANTS)
def test_stdio_program_in_every_language(stdio_outcomes, lang, kind, category, passed):
    out = stdio_outcomes[(lang, kind)]
    assert (out.category, out.passed) == (category, passed), (out.detail, out.stderr[:500])
    assert out.extra["language"] == lang


def test_compile_errors_say_what_the_compiler_said(stdio_outcomes):
    for lang in RAN:
        out = stdio_outcomes[(lang, "broken")]
        assert out.detail.startswith("compile step") and out.stderr.strip(), (lang, out)


def test_same_build_compiles_once_and_then_comes_from_the_cache():
    lang = next(iter(RAN), None)
    if lang is None:
        pytest.skip("no compiled language's toolchain is installed")
    cache = CompileCache()
    sp = spec.StdioSpec(CASES.cases, language=lang)
    code = SUM[lang] + "\n\n"  # a build no other test compiled
    with Evaluator(limits=Limits(timeout=3), compile_cache=cache, max_concurrency=2) as ev:
        first = ev.evaluate([code, code], [sp, spec.StdioSpec(CASES.cases[:1], language=lang)])
        assert cache.stats == {"hits": 0, "misses": 1, "disk_hits": 0}  # two specs, one build
        again = ev.evaluate([code], [sp])
        assert cache.stats["hits"] == 1
    assert [o.category for o in first + again] == ["passed"] * 3


def test_disk_cache_survives_the_process(tmp_path):
    cache = CompileCache(directory=tmp_path)
    cache.put("a" * 64, Compiled({"prog": b"\x7fELF..."}, "", "warning"))
    cache.put("b" * 64, Compiled(None, "compile step 1 failed (exit status 1)", "error: x"))
    fresh = CompileCache(directory=tmp_path)
    assert fresh.get("a" * 64) == Compiled({"prog": b"\x7fELF..."}, "", "warning")
    assert fresh.get("b" * 64).detail.startswith("compile step") and fresh.stats["disk_hits"] == 2
    (tmp_path / f"{'c' * 64}.json").write_text("{not json")
    assert fresh.get("c" * 64) is None  # a broken file is a miss, not an error


def test_memory_cache_is_bounded():
    cache = CompileCache(max_bytes=1000)
    for i in range(10):
        cache.put(str(i), Compiled({"prog": b"x" * 300}))
    assert cache.get("0") is None and cache.get("9") is not None and cache._bytes <= 1000


class _FakeSandbox:
    """Answers compile jobs with given runs, counting them."""

    def __init__(self, run: Run):
        self.run_given, self.jobs = run, 0

    def run(self, jobs):
        self.jobs += len(jobs)
        return [self.run_given for _ in jobs]


@pytest.mark.parametrize("lang", params(RAN[:1] or ["cpp"]))
def test_compiler_timeouts_and_our_failures_are_not_cached(lang):
    p = plan(SUM[lang], spec.StdioSpec(CASES.cases, language=lang), Limits())
    cache = CompileCache()
    for run, cached in [(Run(category="compile_error", detail=f"{COMPILE_TIMEOUT}: it ran past its 30s limit"), False),
                        (Run(category="sandbox_error", detail="runner died"), False),
                        (Run(category="compile_error", detail="compile step 1 failed (exit status 1)"), True)]:
        fake = _FakeSandbox(run)
        result = compile_all(fake, [p, p], cache)[p.key]
        assert fake.jobs == 1  # one build, one compile job
        assert (cache.get(p.key) is not None) is cached, run
        assert isinstance(result, Compiled) == (run.category == "compile_error")


def test_missing_toolchain_is_our_error_not_the_programs(monkeypatch):
    from rewards.sandbox import languages

    monkeypatch.setattr(languages, "SEARCH_PATH", "/nonexistent")
    languages._resolve.cache_clear()
    try:
        out = plan("int main(){}", spec.StdioSpec(CASES.cases, language="cpp"), Limits())
    finally:
        languages._resolve.cache_clear()
    assert out.category == "sandbox_error" and "apt-get install -y g++" in out.detail


# (got, expected, match, equal)
MATCH_CASES = [
    ("3\n", "3", "lines", True),  # trailing newline
    ("3  \n\n", "3\n", "lines", True),  # trailing spaces and empty lines
    (" 3\n", "3\n", "lines", False),  # leading space counts in lines mode
    ("3\n", "3", "exact", False),  # exact: byte for byte
    ("1 2\n3", "1\n2 3\n", "tokens", True),  # tokens: any whitespace
    ("1 2", "1 2 3", "tokens", False),  # a token missing
    ("0.3333333", "0.333333333", "float", True),  # within 1e-6
    ("0.3334", "0.3333", "float", False),  # beyond
    ("1e9", "1000000000.5", "float", True),  # relative tolerance
    ("nan", "nan", "float", True),  # same token
    ("inf", "1e308", "float", False),  # non-finite never matches a number
    ("yes 1.0", "YES 1.0", "float", False),  # words compare exactly
]


@pytest.mark.parametrize("got,expected,match,equal", MATCH_CASES)
def test_stdout_match_modes(got, expected, match, equal):
    assert stdout_matches(got, expected, match) is equal


def test_match_mode_reaches_the_supervisor(evaluator):
    program = "print('1   2')\n"
    tokens = spec.StdioSpec((spec.StdioCase("", "1 2\n"),), match="tokens")
    lines = spec.StdioSpec((spec.StdioCase("", "1 2\n"),))
    assert [o.category for o in evaluator.evaluate([program, program], [tokens, lines])] == ["passed", "wrong_answer"]


def test_spec_language_and_match_round_trip():
    sp = spec.parse('{"kind": "stdio", "language": "C++", "match": "float", "cases": [{"stdin": "", "stdout": "1"}]}')
    assert (sp.language, sp.match) == ("cpp", "float")
    assert spec.parse(spec.dumps(sp)) == sp
    with pytest.raises(ValueError, match="not a language the sandbox runs"):
        spec.parse('{"kind": "stdio", "language": "cobol", "cases": [{"stdin": "", "stdout": ""}]}')
    with pytest.raises(ValueError, match="tests.match"):
        spec.parse('{"kind": "stdio", "match": "fuzzy", "cases": [{"stdin": "", "stdout": ""}]}')


def test_language_names_and_aliases():
    assert [canonical_language(t) for t in ("C++", "js", "golang", "rs", "py", "Java", "cobol")] == \
        ["cpp", "javascript", "go", "rust", "python", "java", None]
    assert language("node") is LANGUAGES["javascript"]
    with pytest.raises(ValueError, match="cpp, java, javascript, rust, go"):
        language("python")


def test_reused_cgroup_takes_a_higher_memory_limit():
    """cgroup v1 refuses a memory limit above the memory+swap limit: raising both must write memory+swap first."""
    cg = Cgroups(True, 1)
    if not cg.dirs:
        pytest.skip(f"no cgroups here: {cg.error}")
    try:
        name, _ = cg.acquire(256 << 20, 8)
        cg.free.append(name)  # as if it had drained
        again, _ = cg.acquire(1 << 30, 8)  # a compile job after a program: EINVAL before the fix
        assert again == name
        cg.free.append(name)
        assert cg.acquire(128 << 20, 8)[0] == name  # and back down
    finally:
        cg.draining.clear()
        cg.free = [name]
        cg.remove_all(1.0)
        for fd in cg.dirs.values():
            import os
            os.close(fd)
        for path in cg.paths.values():
            import os
            os.rmdir(path)


def test_job_fields_are_validated():
    with pytest.raises(ValueError, match="needs argv"):
        Job(code="", mode="stdio", language="cpp")
    with pytest.raises(ValueError, match="compiled language and steps"):
        Job(code="x", mode="compile")
    with pytest.raises(ValueError, match="socketpair"):
        Job(code="", mode="stdio", language="cpp", argv=["/bin/true"], seccomp_allow="socket")
    with pytest.raises(ValueError, match="stdout_match"):
        Job(code="", mode="stdio", stdout_match="fuzzy")
    with pytest.raises(ValueError, match="address_space_mb"):
        Limits(address_space_mb=0)


@pytest.mark.parametrize("lang", params(["java"]))
def test_jvm_file_channels_need_and_get_a_socket_pair(lang):
    """javac reads its source through a file channel, whose set-up makes a socket pair (denied to Python programs)."""
    with Sandbox() as sb:
        [run] = sb.run([Job(code="", mode="stdio", argv=["/bin/true"], language="java", seccomp_allow="socketpair")])
        assert run.category == "ok"
    sp = spec.StdioSpec(CASES.cases, language="java")
    program = SUM["java"].replace("String[] args) {", "String[] args) throws Exception {").replace(
        "Scanner in = new Scanner(System.in);",
                                  "Scanner in = new Scanner(java.nio.channels.Channels.newInputStream("
                                  "java.nio.channels.FileChannel.open(java.nio.file.Path.of(\"/proc/self/fd/0\"))));")
    with Evaluator(limits=Limits(timeout=3)) as ev:
        [out] = ev.evaluate([program], [sp])
    assert out.category == "passed", (out.detail, out.stdout, out.stderr)


@pytest.mark.parametrize("lang", params(["cpp"]))
def test_other_languages_need_the_namespaces_layer(lang):
    """Their files live at fixed paths under /tmp: without a private /tmp per program they would share the host's."""
    with Evaluator(limits=Limits(timeout=3), disable=("namespaces",), allow_weak=True) as ev:
        [out] = ev.evaluate([SUM[lang]], [spec.StdioSpec(CASES.cases, language=lang)])
    assert out.category == "sandbox_error" and "namespaces layer" in out.detail, out
