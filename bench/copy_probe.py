"""Does a warm start copy the constants out of the docstring? (the demo's lab notebook, README)

    python bench/copy_probe.py MODEL_DIR [config overrides...]

For every problem of `eval.split` (synthetic family, `configs/tiny.yaml` plus the overrides, which must match the
ones the warm start was trained with): the prompt and the reference completion, every number token of the
completion masked at once, one forward under the family's attention. Prints one JSON line: the mean probability the
model gives the right token, and how often it is the most likely one, for the number tokens whose value appears in
the docstring's sentence (`doc`: the constants the prompt states) and for the others (`template`: e.g. the 2 of
`v % 2 == 0`). A model that reads its prompt puts most of its mass on the `doc` tokens; sampling at temperature 1
picks a wrong constant with probability 1 - p_right per slot, and one wrong constant fails the task.
`doc_by_steps` splits the `doc` slots by the program's number of steps (the sentence's clauses).
"""

from __future__ import annotations

import json
import re
import sys

import torch

from rlwork.config import load_config
from rlwork.data.prompts import load_split
from rlwork.models.lm import load_diffusion_lm
from rlwork.sft.objective import target_text


def main(args: list[str]) -> None:
    model_dir, overrides = args[0], args[1:]
    cfg = load_config("configs/tiny.yaml", overrides)
    lm = load_diffusion_lm(model_dir, cfg.model.family, trust_remote_code=True)
    tok, block = lm.tokenizer, lm.block_size or 1
    sums: dict = {"doc": [0.0, 0, 0], "template": [0.0, 0, 0]}  # sum p_right, argmax right, slots
    # ("doc", steps): the `doc` slots again, by the program's number of steps
    for problem in load_split(cfg.data, cfg.eval.split, cfg.seed):
        sentence = problem["prompt"].split('"""')[1]
        steps = sentence.count(", then ") + 1
        stated = set(re.findall(r"\d+", sentence))
        prompt = tok(problem["prompt"], add_special_tokens=False)["input_ids"]
        completion = tok(target_text(problem, continuation=True), add_special_tokens=False)["input_ids"]
        pad = (-len(prompt)) % block  # the completion starts a block, as in the sampler
        ids = torch.tensor([[lm.pad_id] * pad + prompt + completion + [lm.eos_id]])
        key_mask = torch.ones_like(ids, dtype=torch.bool)
        key_mask[:, :pad] = False
        start = pad + len(prompt)
        slots = [start + i for i, t in enumerate(completion) if tok.decode([t]).strip().isdigit()]
        if not slots:
            continue
        noisy = ids.clone()
        noisy[0, slots] = lm.mask_id
        with torch.no_grad():
            logits, _ = lm.forward(noisy, key_mask)
        probs = logits[0, slots].float().softmax(-1)
        right = ids[0, slots]
        p_right = probs.gather(1, right[:, None]).squeeze(1)
        top = probs.argmax(-1) == right
        for j, slot in enumerate(slots):
            kind = "doc" if tok.decode([int(ids[0, slot])]).strip() in stated else "template"
            for key in (kind, ("doc", steps)) if kind == "doc" else (kind,):
                acc = sums.setdefault(key, [0.0, 0, 0])
                acc[0], acc[1], acc[2] = acc[0] + float(p_right[j]), acc[1] + int(top[j]), acc[2] + 1

    def summary(p: float, a: int, n: int) -> dict | None:
        return {"slots": n, "p_right": round(p / n, 3), "argmax_right": round(a / n, 3)} if n else None

    print(json.dumps({"model": model_dir, "split": cfg.eval.split,
                      **{kind: summary(*sums[kind]) for kind in ("doc", "template")},
                      "doc_by_steps": {str(k[1]): summary(*v) for k, v in sorted(
                          (k, v) for k, v in sums.items() if isinstance(k, tuple))}}))


if __name__ == "__main__":
    main(sys.argv[1:])
