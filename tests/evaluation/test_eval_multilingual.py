"""`rlwork eval --completions` on the shipped multilingual sample: canonical solutions pass and their mutants fail in
every language (pass@1 per language 1 and 0), through the evaluation path the sampled completions take."""

import json
import math
from pathlib import Path

import pytest

from rewards.sandbox import Evaluator, Limits
from rlwork.cli import main
from rlwork.evaluation.eval import evaluate_completions, per_language_passk, read_completions
from rlwork.rl.scoring import language_means, language_totals, row_language, step_languages
from tests.rewards.languages import missing

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "data" / "multilingual"
LANGS = ["python", "cpp", "java", "javascript", "rust", "go"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml-eval") / "report.json"
    code = main(["eval", "--config", str(ROOT / "configs" / "multilingual_sample.yaml"),
                 f"data.data_files=[{ROOT / 'tests' / 'data' / 'multipl_e.jsonl'}]",
                 "--completions", str(SAMPLE / "canonical.jsonl"), "--completions", str(SAMPLE / "mutants.jsonl"),
                 "--out", str(out)])
    assert code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("lang", LANGS)
def test_canonical_passes_and_mutants_fail_in_every_language(report, lang):
    if lang != "python" and missing(lang):
        pytest.skip(f"{lang} toolchain absent: {missing(lang)}")
    canonical, mutants = report["policies"]["canonical"], report["policies"]["mutants"]
    assert canonical["per_language"][lang] == {"problems": 3, "pass@1": 1.0}
    assert mutants["per_language"][lang] == {"problems": 3, "pass@1": 0.0}
    ran = {s["language"] for s in canonical["samples"] if s["task_id"].endswith(f"/{lang}")}
    assert ran == {lang}  # each ran in its problem's language
    verdicts = {s["verdict"] for s in mutants["samples"] if s["task_id"].endswith(f"/{lang}")}
    assert verdicts == {"wrong_answer"}  # the mutants compile and run: they fail on their answers


def test_report_covers_every_problem(report):
    for policy in report["policies"].values():
        assert len(policy["per_problem"]) == 18 and policy["sandbox_errors"] == 0 or any(map(missing, LANGS[1:]))


def test_base_model_continuations_of_multipl_e_stubs():
    """A base model continues the target-language stub; the program is prompt + completion."""
    from rlwork.data.loading import load_problems

    problems = load_problems("multipl_e", str(ROOT / "tests" / "data" / "multipl_e.jsonl"), skip_malformed=True)
    bodies = {"python": "    return x + y\n", "cpp": "  return x + y;\n}\n", "javascript": "  return x + y;\n}\n",
              "java": "        return x + y;\n    }\n}\n", "rust": "    x + y\n}\n", "go": "\treturn x + y\n}\n"}
    present = [lang for lang in LANGS if lang == "python" or not missing(lang)]
    with Evaluator(limits=Limits(timeout=5.0)) as evaluator:
        result = evaluate_completions(problems.dataset.to_list(),
                                      {f"ML_1_add/{lang}": [bodies[lang]] for lang in present}, [1], evaluator)
    assert result.per_language == {lang: {"problems": 1, "pass@1": 1.0} for lang in present}, result.samples


def test_completion_files_are_checked(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "x"}\n')
    with pytest.raises(ValueError, match="each line must be"):
        read_completions(bad)
    with pytest.raises(ValueError, match="task_ids \\['nope'\\]"):
        evaluate_completions([{"task_id": "a", "prompt": "p", "tests": "{}"}], {"nope": ["x"]}, [1])
    with pytest.raises(SystemExit):
        main(["eval", "--completions", str(bad), "--checkpoint", "base"])


def test_per_language_passk():
    verdicts = {"a": ["passed", "wrong_answer"], "b": ["passed", "passed"], "c": ["sandbox_error", "sandbox_error"]}
    got = per_language_passk(verdicts, {"a": "cpp", "b": "cpp", "c": "go"}, [1])
    assert got["cpp"] == {"problems": 2, "pass@1": 0.75} and math.isnan(got["go"]["pass@1"])


class _Out:
    def __init__(self, category: str, language: str):
        self.category, self.extra = category, {"language": language}


def test_language_metrics_reduce_as_sums():
    import torch

    problems = [{"language": "cpp"}, {"language": "cpp"}, {"language": "any"}, {}]
    outcomes = [_Out("passed", "cpp"), _Out("wrong_answer", "cpp"), _Out("passed", "rust"), None]
    rewards = torch.tensor([1.0, 0.0, 1.0, float("nan")])
    languages = step_languages(problems)
    assert languages == ("cpp", "go", "java", "javascript", "python", "rust")  # "any": every language
    assert step_languages([{}, {"language": "python"}]) == ()  # Python only: no split
    totals = language_totals(problems, rewards, outcomes, languages)
    # two ranks with these totals average to the same sums: the means do not change
    means = language_means({k: v for k, v in totals.items()})
    assert means["reward/lang/cpp/mean"] == 0.5 and means["sandbox/lang/cpp/passed_frac"] == 0.5
    assert means["reward/lang/rust/mean"] == 1.0  # the "any" row ran in Rust
    assert math.isnan(means["reward/lang/python/mean"]) and means["sandbox/lang/python/rows"] == 1.0
    assert math.isnan(means["reward/lang/go/mean"]) and not any(k.startswith("lang/") for k in means)
    assert row_language({"language": "go"}, None) == "go" and row_language({"language": "any"}, None) == "python"
