"""pass@k evaluation of a policy (the base model, or base + a run's adapter) on a problem split.

Each problem gets n = `num_samples` completions from the batched block sampler; each completion runs against the
problem's tests in the sandbox. A sample is correct when every test passed. A sample the sandbox could not score
(`sandbox_error`: our fault, not the model's) is counted and reported, and left out of that problem's n: it is
neither a pass nor a failure. pass@k uses the unbiased estimator of Chen et al. 2021 (`rlwork.evaluation.passk`);
a problem with fewer than k scored samples is left out of the pass@k mean and counted in `excluded`.

Shape letters: B problems, n samples per problem.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewards.sandbox import CATEGORIES, Evaluator, Limits
from rewards.unit_tests import evaluate
from rlwork.config import RunConfig
from rlwork.data.prompts import PromptStream, load_eval_split
from rlwork.diffusion.rollout import generate_rollouts
from rlwork.diffusion.sampler import SamplerConfig
from rlwork.evaluation.passk import format_passk_table, pass_at_k
from rlwork.models.lm import DiffusionLM
from rlwork.runtime import dist
from rlwork.runtime.policies import check_started_from, load_policy, resolve_checkpoint
from rlwork.runtime.rng import row_generator
from rlwork.runtime.session import check_no_warm_start

PASSED, SANDBOX_ERROR = "passed", "sandbox_error"


@dataclass(frozen=True)
class EvalResult:
    """pass@k of one policy on B problems with n samples each.

    Attributes:
        pass_at_k: "pass@k" -> mean over the problems with >= k scored samples (NaN if there is none).
        per_problem: task_id -> {"n": scored samples, "correct": c, "sandbox_errors": e, "pass@k": value or None}.
        verdicts: sample category (rewards.sandbox.CATEGORIES) -> count over all B*n samples.
        sandbox_errors: samples the sandbox could not score; left out of every n, never counted as failures.
        excluded: "pass@k" -> problems left out of that mean for having fewer than k scored samples.
        samples: B*n records {task_id, completion, verdict, tests_passed, tests_total, language}, grouped by
            problem (language: the one the program ran in).
        num_samples: n requested per problem.
        num_forwards: model forward calls the sampler made.
        per_language: the problem's language ("language" column; python without one; "any" for problems whose
            answers pick it) -> {"problems": count, "pass@k": mean over its problems with >= k scored samples}.
    """

    pass_at_k: dict[str, float]
    per_problem: dict[str, dict[str, Any]]
    verdicts: dict[str, int]
    sandbox_errors: int
    excluded: dict[str, int]
    samples: list[dict[str, Any]]
    num_samples: int
    num_forwards: int
    per_language: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarise_verdicts(verdicts: Mapping[str, Sequence[str]], ks: Sequence[int]) -> tuple[dict, dict, dict]:
    """pass@k from each problem's sample categories ("passed" = correct; "sandbox_error" = not scored).

    verdicts: task_id -> one category per sample. Returns (mean "pass@k" -> value, per-problem records as in
    `EvalResult.per_problem`, "pass@k" -> number of problems excluded for having fewer than k scored samples).

    >>> summarise_verdicts({"a": ["passed", "wrong_answer"]}, [1])[0]
    {'pass@1': 0.5}
    """
    if not verdicts:
        raise ValueError("verdicts is empty: need at least one problem")
    per_problem: dict[str, dict[str, Any]] = {}
    for task_id, cats in verdicts.items():
        scored = [c for c in cats if c != SANDBOX_ERROR]
        n, c = len(scored), sum(v == PASSED for v in scored)
        record: dict[str, Any] = {"n": n, "correct": c, "sandbox_errors": len(cats) - n}
        record.update({f"pass@{k}": pass_at_k(n, c, k) if n >= k else None for k in ks})
        per_problem[task_id] = record
    means, excluded = {}, {}
    for k in ks:
        values = [p[f"pass@{k}"] for p in per_problem.values() if p[f"pass@{k}"] is not None]
        means[f"pass@{k}"] = sum(values) / len(values) if values else float("nan")
        excluded[f"pass@{k}"] = len(per_problem) - len(values)
    return means, per_problem, excluded


def per_language_passk(verdicts: Mapping[str, Sequence[str]], languages: Mapping[str, str],
                       ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """pass@k per problem language: `summarise_verdicts` over each language's problems.

    >>> per_language_passk({"a": ["passed"], "b": ["wrong_answer"]}, {"a": "cpp", "b": "go"}, [1])
    {'cpp': {'problems': 1, 'pass@1': 1.0}, 'go': {'problems': 1, 'pass@1': 0.0}}
    """
    out = {}
    for lang in sorted(set(languages.values())):
        mine = {t: v for t, v in verdicts.items() if languages[t] == lang}
        if mine:
            means, _, _ = summarise_verdicts(mine, ks)
            out[lang] = {"problems": len(mine), **means}
    return out


def problem_language(problem: Mapping[str, Any]) -> str:
    return problem.get("language") or "python"


def _result(verdicts: dict, samples: list, languages: dict, ks: Sequence[int], num_samples: int,
            num_forwards: int) -> EvalResult:
    means, per_problem, excluded = summarise_verdicts(verdicts, ks)
    counts = Counter(s["verdict"] for s in samples)
    return EvalResult(
        pass_at_k=means, per_problem=per_problem,
        verdicts={c: counts.get(c, 0) for c in [*CATEGORIES, *sorted(set(counts) - set(CATEGORIES))]},
        sandbox_errors=counts.get(SANDBOX_ERROR, 0), excluded=excluded, samples=samples, num_samples=num_samples,
        num_forwards=num_forwards, per_language=per_language_passk(verdicts, languages, ks),
    )


def _check_args(problems: Sequence[Mapping], num_samples: int, ks: Sequence[int], batch_size: int) -> list[str]:
    if not problems:
        raise ValueError("problems is empty: evaluate at least one problem")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples={num_samples}, batch_size={batch_size}: both must be >= 1")
    bad = [k for k in ks if not 1 <= k <= num_samples]
    if not ks or bad:
        raise ValueError(f"ks={list(ks)}: give at least one k, each in [1, num_samples={num_samples}]")
    task_ids = [str(p.get("task_id", i)) for i, p in enumerate(problems)]
    dupes = sorted(t for t, count in Counter(task_ids).items() if count > 1)
    if dupes:
        raise ValueError(f"task_id {dupes[0]!r} occurs more than once: each problem needs its own task_id")
    return task_ids


def evaluate_passk(
    lm: DiffusionLM,
    problems: Sequence[Mapping[str, Any]],
    render: Callable[[Mapping[str, Any]], str],
    num_samples: int,
    ks: Sequence[int],
    sampler_config: SamplerConfig,
    generator: torch.Generator | Callable[[int], torch.Generator],
    batch_size: int,
    evaluator: Evaluator | None = None,
    progress: bool | str = True,
    model: torch.nn.Module | None = None,
) -> EvalResult:
    """n = `num_samples` completions per problem, run against the problem's `tests`; pass@k per problem and mean.

    render: problem -> prompt text (e.g. `PromptStream(...).text`). Rows are sampled `batch_size` at a time, and
    whole problems are scored together, so the sandbox sees one batch per chunk of problems. `generator` is one
    generator for all rows, or a function from a batch's first row (row b*n + g is sample g of problem b) to that
    batch's generator. `evaluator` is reused if given (and left open); otherwise one is started and closed here.
    `model` overrides lm.model (the trainer's peft/DeepSpeed wrapper). `progress`: a bar of problems done with its
    ETA (a string names a transient bar, removed when done).
    """
    from tqdm.auto import tqdm

    task_ids = _check_args(problems, num_samples, ks, batch_size)
    transient = isinstance(progress, str)  # a named bar inside another loop (RL's phase 6) leaves no line behind
    progress_bar = {"desc": progress if transient else "pass@k", "leave": not transient}
    per_chunk = max(1, batch_size // num_samples)  # problems whose samples fit one sampler batch
    own = evaluator is None
    ev = evaluator if evaluator is not None else Evaluator()
    verdicts: dict[str, list[str]] = {}
    samples: list[dict[str, Any]] = []
    num_forwards = 0
    try:
        with tqdm(total=len(problems), unit="problem", disable=not progress, **progress_bar) as bar:
            for start in range(0, len(problems), per_chunk):
                chunk = [dict(p) for p in problems[start:start + per_chunk]]
                gen = generator
                if callable(generator):
                    gen = lambda row, first=start * num_samples: generator(first + row)  # noqa: E731
                rollout = generate_rollouts(lm, chunk, [render(p) for p in chunk], num_samples, sampler_config,
                                            gen, batch_size, model=model)
                num_forwards += rollout.num_forwards
                outcomes = evaluate(rollout.completions, [p["tests"] for p in rollout.problems], ev,
                                    prompts=rollout.prompts, languages=[p.get("language") for p in rollout.problems])
                for row, (completion, out) in enumerate(zip(rollout.completions, outcomes, strict=True)):
                    task_id = task_ids[start + row // num_samples]  # rows are grouped by problem
                    verdicts.setdefault(task_id, []).append(out.category)
                    samples.append(_sample(task_id, completion, out))
                bar.update(len(chunk))
                solved = sum(PASSED in v for v in verdicts.values())
                bar.set_postfix(solved=f"{solved}/{len(verdicts)}")
    finally:
        if own:
            ev.close()
    languages = {t: problem_language(p) for t, p in zip(task_ids, problems, strict=True)}
    return _result(verdicts, samples, languages, ks, num_samples, num_forwards)


def _sample(task_id: str, completion: str, out) -> dict[str, Any]:
    return {"task_id": task_id, "completion": completion, "verdict": out.category, "tests_passed": out.passed,
            "tests_total": out.total, "language": getattr(out, "extra", {}).get("language", "python")}


def evaluate_completions(problems: Sequence[Mapping[str, Any]], completions: Mapping[str, Sequence[str]],
                         ks: Sequence[int], evaluator: Evaluator | None = None) -> EvalResult:
    """pass@k of given completions (task_id -> its samples) instead of sampled ones, through the same scoring.

    Problems without completions are left out; a completion for a task_id not in `problems` is a ValueError. The
    prompt a completion answers is the problem's own (`prompt`), as a base model's continuation needs it.
    """
    by_id = {str(p.get("task_id")): p for p in problems}
    unknown = sorted(set(completions) - set(by_id))
    if unknown:
        raise ValueError(f"completions for task_ids {unknown[:5]} that the evaluation problems lack; check the file "
                         "against the config's data and eval.split")
    chosen = [(t, c) for t in by_id if t in completions for c in completions[t]]
    if not chosen:
        raise ValueError("no completion answers an evaluation problem")
    own = evaluator is None
    ev = evaluator if evaluator is not None else Evaluator()
    try:
        rows = [by_id[t] for t, _ in chosen]
        outcomes = evaluate([c for _, c in chosen], [p["tests"] for p in rows], ev,
                            prompts=[p["prompt"] if isinstance(p["prompt"], str) else None for p in rows],
                            languages=[p.get("language") for p in rows])
    finally:
        if own:
            ev.close()
    verdicts: dict[str, list[str]] = {}
    samples = []
    for (task_id, completion), out in zip(chosen, outcomes, strict=True):
        verdicts.setdefault(task_id, []).append(out.category)
        samples.append(_sample(task_id, completion, out))
    languages = {t: problem_language(by_id[t]) for t in verdicts}
    return _result(verdicts, samples, languages, ks, max(map(len, verdicts.values())), 0)


# ---------------------------------------------------------------------------------------------------------------
# Base vs trained


def _default_names(checkpoints: Sequence[str | os.PathLike | None]) -> list[str]:
    if len(checkpoints) == 2 and checkpoints[0] is None:
        return ["base", "trained"]
    return ["base" if c is None else Path(c).name for c in checkpoints]


def run_eval(
    cfg: RunConfig,
    checkpoints: Sequence[str | os.PathLike | None],
    names: Sequence[str] | None = None,
    out_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate one or two policies (None = the base model) on the evaluation problems of `cfg.eval` (eval.dataset,
    eval.path, eval.split; `rlwork.data.prompts.eval_source`); print the table with the source it scored.

    Every policy sees the same problems, prompts and sampler seed (`cfg.seed`), and one sandbox is shared.
    Rows are sampled `cfg.train.rollout_batch_size` at a time. Returns a JSON-able dict (written to `out_path`
    too when given): the source ("source", "split", "training_data"), the table's numbers under "table", and each
    policy's full `EvalResult` under "policies".
    """
    if not 1 <= len(checkpoints) <= 2:
        raise ValueError(f"{len(checkpoints)} checkpoints: evaluate one policy, or two (e.g. base and trained)")
    names = list(names) if names is not None else _default_names(checkpoints)
    if len(names) != len(checkpoints) or len(set(names)) != len(names):
        raise ValueError(f"names={names}: give one distinct name per checkpoint")
    check_no_warm_start(cfg)
    for checkpoint in checkpoints:  # every policy checked before the first one samples: a bad path fails now
        if checkpoint is not None:
            check_started_from(resolve_checkpoint(checkpoint), cfg.model)
    problems, source = load_eval_split(cfg.data, cfg.eval, cfg.seed)  # refuses the training data unless asked
    evaluator = open_sandbox(cfg)
    results: dict[str, EvalResult] = {}
    try:
        for name, checkpoint in zip(names, checkpoints, strict=True):
            lm = load_policy(cfg.model, checkpoint)
            render = PromptStream(problems, lm.tokenizer, chat=cfg.data.chat, seed=cfg.seed,
                                  style=cfg.data.prompt_style).text
            generator = torch.Generator(device=lm.device).manual_seed(cfg.seed)  # same draws for every policy
            results[name] = evaluate_passk(lm, problems, render, cfg.eval.num_samples, cfg.eval.ks,
                                           cfg.sampler, generator, cfg.train.rollout_batch_size,
                                           evaluator=evaluator, progress=progress)
            del lm
    finally:
        evaluator.close()
    first = results[names[0]].pass_at_k
    second = results[names[1]].pass_at_k if len(names) == 2 else None
    table, data = format_passk_table(first, second, names=names)
    print(f"{source.describe()}: {len(problems)} problems x {cfg.eval.num_samples} samples")
    print(table)
    for name, result in results.items():
        mix = ", ".join(f"{c} {v}" for c, v in result.verdicts.items() if v)
        excluded = {k: v for k, v in result.excluded.items() if v}
        print(f"{name}: {mix}" + (f" | excluded (too few scored samples): {excluded}" if excluded else ""))
        if set(result.per_language) != {"python"}:
            for lang, row in result.per_language.items():
                print(f"  {lang:<11} {row['problems']:>3} problems  "
                      + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "problems"))
    report = {
        "dataset": source.dataset, "source": source.describe(), "split": source.split,
        "training_data": source.training_data, "num_problems": len(problems),
        "num_samples": cfg.eval.num_samples, "ks": list(cfg.eval.ks), "seed": cfg.seed,
        "model": cfg.model.path, "sampler": dataclasses.asdict(cfg.sampler), "table": data,
        "policies": {name: {"checkpoint": None if c is None else str(c), **results[name].to_dict()}
                     for name, c in zip(names, checkpoints, strict=True)},
    }
    if out_path is not None:
        _write_json(Path(out_path), report)
    return report


def read_completions(path: str | os.PathLike) -> dict[str, list[str]]:
    """task_id -> completions, from a JSONL file of {"task_id", "completion"} (several lines per task: samples)."""
    out: dict[str, list[str]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or "task_id" not in row or not isinstance(row.get("completion"), str | list):
            raise ValueError(f"{path}:{n}: each line must be {{\"task_id\": ..., \"completion\": ...}}")
        out.setdefault(str(row["task_id"]), []).append(row["completion"])
    return out


def run_eval_completions(cfg: RunConfig, files: Sequence[str | os.PathLike], out_path: str | os.PathLike | None = None
                         ) -> dict[str, Any]:
    """Score fixed completions (one JSONL file per policy, e.g. a reference and its mutants) on `cfg.eval.split` of
    `cfg.data` through the same scoring as `run_eval`, without a model; print pass@k overall and per language."""
    problems, source = load_eval_split(cfg.data, cfg.eval, cfg.seed)  # refuses the training data unless asked
    names = [Path(f).stem for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"--completions files {list(files)} share a name: give files with distinct names")
    evaluator = open_sandbox(cfg)
    try:
        results = {name: evaluate_completions(problems, read_completions(f), cfg.eval.ks, evaluator)
                   for name, f in zip(names, files, strict=True)}
    finally:
        evaluator.close()
    print(f"{source.describe()}: fixed completions from {', '.join(map(str, files))}")
    report = {"dataset": source.dataset, "source": source.describe(), "split": source.split,
              "training_data": source.training_data, "ks": list(cfg.eval.ks), "policies": {}}
    for name, f in zip(names, files, strict=True):
        result = results[name]
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.pass_at_k.items()))
        for lang, row in result.per_language.items():
            print(f"  {lang:<11} {row['problems']:>3} problems  "
                  + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "problems"))
        report["policies"][name] = {"completions": str(f), **result.to_dict()}
    if out_path is not None:
        _write_json(Path(out_path), report)
    return report


def evaluate_sharded(lm: DiffusionLM, problems: Sequence[Mapping[str, Any]],
                     render: Callable[[Mapping[str, Any]], str], num_samples: int, ks: Sequence[int],
                     sampler_config: SamplerConfig, seed: int, batch_size: int, evaluator: Evaluator,
                     model: torch.nn.Module | None = None) -> dict[str, float]:
    """`eval/pass@k` of a policy on `problems`, the problems split over the ranks (every rank gets the same values).

    Each rank samples a contiguous slice of the problems; verdicts are gathered, so pass@k covers all of them.
    The sampling noise is keyed by (seed, global row) and is the same at every call: differences between
    evaluations of a training run come from the policy, not from new draws. RL's phase 6 calls this.
    """
    lo = len(problems) * dist.rank() // dist.world_size()
    hi = len(problems) * (dist.rank() + 1) // dist.world_size()
    verdicts: list[tuple[int, str]] = []
    if hi > lo:
        result = evaluate_passk(
            lm, problems[lo:hi], render, num_samples, ks, sampler_config,
            lambda row: row_generator(seed, 0, "eval", lo * num_samples + row, lm.device), batch_size,
            evaluator=evaluator, progress="eval" if dist.is_main_process() else False, model=model,
        )
        verdicts = [(lo + j // num_samples, s["verdict"]) for j, s in enumerate(result.samples)]  # grouped by problem
    by_problem: dict[str, list[str]] = {}
    for index, verdict in dist.gather_lists(verdicts):
        by_problem.setdefault(str(index), []).append(verdict)
    means, _, _ = summarise_verdicts(by_problem, ks)
    return {f"eval/{k}": v for k, v in means.items()}


def open_sandbox(cfg: RunConfig) -> Evaluator:
    """The sandbox for evaluation, with the run's reward settings (timeout, workers, isolation); close it after."""
    return Evaluator(limits=Limits(timeout=cfg.rewards.timeout_s), max_concurrency=cfg.rewards.workers,
                     allow_weak=cfg.rewards.allow_weak_isolation)


def _write_json(path: Path, data: dict) -> None:
    """Write under a temporary name, then rename: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)
