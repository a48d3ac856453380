"""The attack classes rewritten for C++, Java, JavaScript, Rust and Go (tests/rewards/multilingual_attacks.json),
run through `python -m rewards.attacks` as a user would: every verdict right, nothing damaged. Cases of a language
whose toolchain is absent are left out of the run and reported as skipped."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import spec
from rewards.harness.types import Signature
from rewards.sandbox import Limits, native
from tests.rewards.languages import missing

ATTACKS = Path(__file__).parent / "multilingual_attacks.json"
CASES = json.loads(ATTACKS.read_text())


@pytest.fixture(scope="module")
def cli_lines(tmp_path_factory):
    where = tmp_path_factory.mktemp("ml-attacks")
    runnable = [c for c in CASES if missing(c["language"]) is None]
    if not runnable:
        pytest.skip("no compiled language's toolchain is installed")
    path = where / "attacks.json"
    path.write_text(json.dumps(runnable))
    proc = subprocess.run([sys.executable, "-m", "rewards.attacks", str(path), "--timeout", "1.5",
                           "--probe-dir", str(where)], capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    return {line.split()[1]: line for line in lines[:-1]}, summary, proc.returncode, len(runnable)


@pytest.mark.parametrize("case_id,language", [(c["id"], c["language"]) for c in CASES])
def test_multilingual_attack(cli_lines, case_id, language):
    if missing(language):
        pytest.skip(f"{language} toolchain absent: {missing(language)}")
    lines, _, _, _ = cli_lines
    assert lines[case_id].startswith("OK "), lines[case_id]


def test_attack_cli_reports_every_case_right(cli_lines):
    _, summary, returncode, count = cli_lines
    assert summary == {"cases": count, "correct_verdicts": count, "host_damage": 0, "harness_failures": 0}
    assert returncode == 0


def test_every_language_has_each_attack_class():
    classes = {}
    for c in CASES:
        classes.setdefault(c["language"], set()).add(c["category"].split(" ")[0])
    for lang, found in classes.items():
        assert {"verdict-forgery", "resource-exhaustion", "filesystem-escape"} <= found, (lang, found)
    assert set(classes) == {"cpp", "java", "javascript", "rust", "go"}


SECRET = "EXPECTED-VALUE-0xC0FFEE"
# Programs that print everything they can read: their own files (program, harness, compiled binary), /tmp,
# the environment. The expected values must not be among it.
DUMP = {
    "cpp": "#include <cstdio>\n#include <string>\n#include <dirent.h>\n"
           "static void cat(const char *p) { FILE *f = fopen(p, \"rb\"); if (!f) return; char b[65536];\n"
           "  size_t n; while ((n = fread(b, 1, sizeof b, f)) > 0) fwrite(b, 1, n, stdout); fclose(f); }\n"
           "std::string f(std::string x) {\n  cat(\"/proc/self/environ\"); cat(\"/proc/self/cmdline\");\n"
           "  DIR *d = opendir(\"/tmp/app\");\n  if (d) { while (dirent *e = readdir(d))\n"
           "    cat((std::string(\"/tmp/app/\") + e->d_name).c_str()); closedir(d); }\n  return x;\n}\n",
    "javascript": "const fs = require('fs');\nfunction f(x) {\n  for (const n of fs.readdirSync('/tmp/app')) {\n"
                  "    console.log(fs.readFileSync('/tmp/app/' + n, 'utf8'));\n  }\n"
                  "  console.log(JSON.stringify(process.env), process.argv.join(' '));\n  return x;\n}\n",
}


@pytest.mark.parametrize("lang", list(DUMP))
def test_expected_values_never_enter_the_sandbox(evaluator, lang):
    if missing(lang):
        pytest.skip(f"{lang} toolchain absent: {missing(lang)}")
    sp = spec.CallSpec("f", (spec.CallCase(["input"], SECRET),), language=lang,
                       signature=Signature(("str",), "str"))
    plan = native.plan(DUMP[lang], sp, Limits(timeout=3))
    assert SECRET not in json.dumps(plan.build.sources)  # what is compiled: program and harness
    compiled = native.compile_all(evaluator.sandbox, [plan], evaluator.compile_cache)[plan.key]
    [job] = plan.make_jobs(compiled.files)
    program_part = {k: v for k, v in dataclasses.asdict(job).items() if k != "expected"}
    assert SECRET not in repr(program_part) and SECRET in repr(job.check())  # only the supervisor's part has it
    job.expected = None  # run it unjudged, to get its whole output back
    [run] = evaluator.sandbox.run([job])
    assert "input" in run.stdout and SECRET not in run.stdout, run.stdout[-2000:]
    assert run.results[0]["ok"] == "input"  # it answered; the supervisor alone compares with the expected value


def test_case_specs_follow_the_language():
    from rewards.attacks import case_specs

    [(label, sp)] = case_specs({"id": "x", "language": "rs"})
    assert label == "call" and sp.language == "rust" and sp.signature == Signature(("int", "int"), "int")
    assert [s.language for _, s in case_specs({"id": "x", "language": "go", "specs": ["call", "stdio"]})] == ["go"] * 2
    assert [label for label, _ in case_specs({"id": "x"})] == ["call", "assert"]  # Python's defaults
    with pytest.raises(ValueError, match="'call' or 'stdio'"):
        case_specs({"id": "x", "language": "cpp", "specs": ["assert"]})
    with pytest.raises(ValueError, match="not one the sandbox runs"):
        case_specs({"id": "x", "language": "cobol"})


@pytest.mark.slow
def test_rootless_multilingual_attacks():
    """The same attacks as a user without privileges (a user namespace; per-program rlimits without cgroups)."""
    import os
    import shutil
    import tempfile

    from tests.rewards.test_sandbox_isolation import ROOTLESS_UID, _rootless

    where = Path(tempfile.mkdtemp(prefix="sbx-rootless-ml-"))  # pytest's tmp dirs are closed to other users
    try:
        runnable = [c for c in CASES if missing(c["language"]) is None]
        (where / "attacks.json").write_text(json.dumps(runnable))
        for path in (where, where / "attacks.json"):
            os.chown(path, ROOTLESS_UID, ROOTLESS_UID)
        proc = _rootless(["-m", "rewards.attacks", str(where / "attacks.json"), "--timeout", "2", "--probe-dir",
                          str(where / "probes")], str(where), 900)
        assert proc.stdout, proc.stderr[-3000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert proc.returncode == 0 and summary["correct_verdicts"] == summary["cases"] == len(runnable), proc.stdout
    finally:
        shutil.rmtree(where, ignore_errors=True)
