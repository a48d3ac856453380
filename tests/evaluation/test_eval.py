"""pass@k evaluation: hand-computed cases through the real rollout/sandbox path with controlled completions,
sandbox errors kept out of n, exact enumeration of the estimator, and run_eval end to end on the tiny coder."""

import itertools
import json
import math
import random

import pytest
import torch

from rewards.sandbox import Evaluator, Limits
from rewards.sandbox.verdict import make_outcome
from rlwork.config import load_config
from rlwork.diffusion import rollout as rollout_mod
from rlwork.diffusion.sampler import Generation, SamplerConfig
from rlwork.evaluation.eval import evaluate_passk, run_eval, summarise_verdicts
from rlwork.runtime import checkpoint as ckpt
from tests.runtime.test_policies import perturbed_engine

SANDBOX_DOWN = "# sandbox-down marker"


def _problem(task_id: str, name: str, body: str, cases: list[tuple[int, int]]) -> dict:
    tests = {"kind": "call", "entry_point": name, "cases": [{"args": [a], "expected": e} for a, e in cases]}
    return {"task_id": task_id, "prompt": f"Write {name}(x).\n", "entry_point": name, "tests": json.dumps(tests),
            "reference": f"def {name}(x):\n    {body}\n"}


PROBLEMS = [
    _problem("t/add1", "add1", "return x + 1", [(1, 2), (5, 6)]),
    _problem("t/double", "double", "return 2 * x", [(3, 6), (-2, -4)]),
    _problem("t/square", "square", "return x * x", [(3, 9), (4, 16)]),
]


def completion(problem: dict, kind: str) -> str:
    """R: reference (correct), W: wrong answer, S: syntax error, E: a program the fake sandbox fails on."""
    name = problem["entry_point"]
    code = {
        "R": problem["reference"],
        "W": f"def {name}(x):\n    return 0\n",
        "S": f"def {name}(x)\n    return x\n",
        "E": f"def {name}(x):\n    return x  {SANDBOX_DOWN}\n",
    }[kind]
    return f"```python\n{code}```"


class ScriptedSampler:
    """Stands in for the sampler: row g of a problem's group gets completion plan[task_id][g] (as tokens)."""

    def __init__(self, plan: dict[str, str]):
        self.plan = plan
        self.next = dict.fromkeys(plan, 0)
        self.batch_rows: list[int] = []

    def __call__(self, lm, prompt_ids, prompt_mask, config, generator=None, model=None) -> Generation:
        self.batch_rows.append(prompt_ids.shape[0])
        rows = []
        for ids, mask in zip(prompt_ids, prompt_mask, strict=True):
            prompt = lm.tokenizer.decode(ids[mask].tolist(), skip_special_tokens=True)
            problem = next(p for p in PROBLEMS if p["prompt"] == prompt)
            kind = self.plan[problem["task_id"]][self.next[problem["task_id"]]]
            self.next[problem["task_id"]] += 1
            text = completion(problem, kind)
            tokens = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            assert lm.tokenizer.decode(tokens) == text  # the scripted text survives the round trip
            rows.append([*tokens, lm.eos_id])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
        step = torch.where(mask, 0, -1)
        return Generation(ids, mask, step, torch.ones(len(rows), dtype=torch.long), 1,
                          sampling_per_token_logps=torch.zeros(ids.shape), trace_ids=ids, trace_step=step)


class FlakySandbox:
    """The real evaluator, except that programs carrying the marker come back as sandbox errors (our fault)."""

    def __init__(self, inner: Evaluator):
        self.inner = inner

    def evaluate(self, programs, tests):
        outcomes = self.inner.evaluate(programs, tests)
        return [make_outcome(["sandbox_error"] * o.total, detail="injected") if SANDBOX_DOWN in p else o
                for p, o in zip(programs, outcomes, strict=True)]


@pytest.fixture(scope="module")
def evaluator():
    ev = Evaluator(limits=Limits(timeout=2.0))
    yield ev
    ev.close()


def scripted_eval(tiny_lm, monkeypatch, plan, ks, evaluator, batch_size=3):
    sampler = ScriptedSampler(plan)
    monkeypatch.setattr(rollout_mod, "generate", sampler)
    problems = [p for p in PROBLEMS if p["task_id"] in plan]
    result = evaluate_passk(tiny_lm, problems, lambda p: p["prompt"], len(next(iter(plan.values()))), ks,
                            SamplerConfig(max_new_tokens=8), torch.Generator(), batch_size, evaluator=evaluator,
                            progress=False)
    return result, sampler


def test_passk_by_hand_through_sampler_batches_and_sandbox(tiny_lm, monkeypatch, evaluator):
    plan = {"t/add1": "WRWW", "t/double": "WSWW", "t/square": "RRSR"}  # 1, 0 and 3 correct of 4
    result, sampler = scripted_eval(tiny_lm, monkeypatch, plan, (1, 2, 4), evaluator)
    # pass@1 = c/n; pass@2 = 1 - C(n-c, 2)/C(4, 2): add1 1 - 3/6, double 0, square 1 (n - c < k).
    assert result.pass_at_k == pytest.approx({"pass@1": (0.25 + 0 + 0.75) / 3, "pass@2": (0.5 + 0 + 1) / 3,
                                              "pass@4": 2 / 3})
    assert result.per_problem["t/add1"] == pytest.approx(
        {"n": 4, "correct": 1, "sandbox_errors": 0, "pass@1": 0.25, "pass@2": 0.5, "pass@4": 1.0})
    assert {k: v for k, v in result.verdicts.items() if v} == {"passed": 4, "wrong_answer": 6, "syntax_error": 2}
    assert result.sandbox_errors == 0 and result.excluded == {"pass@1": 0, "pass@2": 0, "pass@4": 0}
    assert max(sampler.batch_rows) <= 3 and sum(sampler.batch_rows) == 12  # batched, every row sampled once
    assert [s["verdict"] for s in result.samples[:4]] == ["wrong_answer", "passed", "wrong_answer", "wrong_answer"]
    json.dumps(result.to_dict())


def test_sandbox_errors_are_reported_and_left_out_of_n(tiny_lm, monkeypatch, evaluator):
    plan = {"t/add1": "REWE", "t/square": "RWWW"}
    result, _ = scripted_eval(tiny_lm, monkeypatch, plan, (1, 2, 3), FlakySandbox(evaluator), batch_size=8)
    # add1: 2 of 4 samples unscored, so n = 2 with 1 correct (counted as failures it would be 1 of 4); no pass@3.
    assert result.per_problem["t/add1"] == pytest.approx(
        {"n": 2, "correct": 1, "sandbox_errors": 2, "pass@1": 0.5, "pass@2": 1.0, "pass@3": None})
    assert result.sandbox_errors == 2 and result.verdicts["sandbox_error"] == 2
    assert result.excluded == {"pass@1": 0, "pass@2": 0, "pass@3": 1}
    # square: 1 of 4 -> pass@3 = 1 - C(3,3)/C(4,3) = 0.75, the only problem in that mean.
    assert result.pass_at_k == pytest.approx({"pass@1": (0.5 + 0.25) / 2, "pass@2": (1.0 + 0.5) / 2, "pass@3": 0.75})


def test_summarise_verdicts_matches_enumeration_of_k_subsets():
    rng = random.Random(0)
    cats = ["passed", "wrong_answer", "timeout", "sandbox_error"]
    verdicts = {f"p{i}": [rng.choice(cats) for _ in range(6)] for i in range(12)}
    means, per_problem, _ = summarise_verdicts(verdicts, [1, 2, 3])
    for k in (1, 2, 3):
        values = []
        for task_id, samples in verdicts.items():
            scored = [s for s in samples if s != "sandbox_error"]
            if len(scored) < k:
                assert per_problem[task_id][f"pass@{k}"] is None
                continue
            subsets = list(itertools.combinations(scored, k))
            exact = sum("passed" in s for s in subsets) / len(subsets)
            assert per_problem[task_id][f"pass@{k}"] == pytest.approx(exact)
            values.append(exact)
        assert means[f"pass@{k}"] == pytest.approx(sum(values) / len(values))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(ks=(5,)), r"ks=\[5\]"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(problems=[PROBLEMS[0], PROBLEMS[0]]), "more than once"),
])
def test_bad_arguments_are_refused(tiny_lm, kwargs, match):
    args = dict(problems=PROBLEMS, ks=(1,), batch_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_passk(tiny_lm, args["problems"], lambda p: p["prompt"], 4, args["ks"], SamplerConfig(),
                       torch.Generator(), args["batch_size"], progress=False)


def test_run_eval_base_vs_trained_on_the_tiny_coder(tiny_lm, tmp_path, capsys):
    engine = perturbed_engine(tiny_lm, 4)
    ckpt.save_checkpoint(tmp_path / "run", 1, engine, None, {}, {"seed": 0})
    cfg = load_config(None, ["data.synthetic_train=4", "data.synthetic_heldout=2", "eval.num_samples=2",
                             "eval.ks=[1,2]", "sampler.max_new_tokens=8", "train.rollout_batch_size=3"])
    out = tmp_path / "eval.json"
    report = run_eval(cfg, [None, str(tmp_path / "run")], out_path=out, progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report["table"]) == {"base", "trained", "delta"}
    for name in ("base", "trained"):
        result = report["policies"][name]
        assert len(result["samples"]) == 4 and sum(result["verdicts"].values()) == 4
        assert all(p["n"] + p["sandbox_errors"] == 2 for p in result["per_problem"].values())
        for k in ("pass@1", "pass@2"):
            assert math.isnan(result["pass_at_k"][k]) or 0.0 <= result["pass_at_k"][k] <= 1.0
            assert report["table"][name][k] == result["pass_at_k"][k] or math.isnan(result["pass_at_k"][k])
    # same seed and prompts: the two policies differ only by the adapter, so their completions differ
    assert [s["completion"] for s in report["policies"]["base"]["samples"]] != \
        [s["completion"] for s in report["policies"]["trained"]["samples"]]
    printed = capsys.readouterr().out
    assert "pass@1" in printed and "trained" in printed and "delta" in printed
    # the table says which source and split it scored
    assert report["source"] == "synthetic split heldout" and report["split"] == "heldout"
    assert not report["training_data"] and "synthetic split heldout: 2 problems x 2 samples" in printed


def test_run_eval_checks_every_checkpoint_before_sampling(tiny_lm, tmp_path, monkeypatch):
    """`--checkpoint base --checkpoint RUN` with a bad RUN used to evaluate base in full first."""
    import rlwork.evaluation.eval as eval_mod

    sampled = []
    monkeypatch.setattr(eval_mod, "evaluate_passk", lambda *a, **k: sampled.append(a) or None)
    cfg = load_config(None, ["data.synthetic_train=4", "data.synthetic_heldout=2"])
    with pytest.raises(ValueError, match="neither a checkpoint folder"):
        run_eval(cfg, [None, str(tmp_path / "no_such_run")], progress=False)
    engine = perturbed_engine(tiny_lm, 4)
    ckpt.save_checkpoint(tmp_path / "other", 1, engine, None, {}, {"model": {"path": str(tmp_path / "elsewhere")}})
    with pytest.raises(ValueError, match="was trained from model.path="):
        run_eval(cfg, [None, str(tmp_path / "other")], progress=False)
    assert sampled == []
