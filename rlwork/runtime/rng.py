"""Randomness keyed by where it is used, not by generator state carried through a run."""

from __future__ import annotations

import hashlib

import torch


def row_generator(seed: int, step: int, phase: str, row: int, device: torch.device) -> torch.Generator:
    """The generator for the rows of `phase` that start at global `row` of step `step`.

    Keying randomness by (seed, step, phase, global row) instead of carrying generator state means a batch split
    over 1 or R ranks draws the same noise (when the chunks align), and a resumed run needs no RNG state to
    continue exactly. Phases in use: "sample" (RL rollout batches), "mask<d>" (ELBO mask draws per micro-batch),
    "eval" (in-training evaluation), "sft" (SFT micro-batches), "sft-print"/"sft-file" (which SFT documents print
    their result / go on past their function, drawn once per global batch).
    """
    key = f"{seed}/{step}/{phase}/{row}".encode()
    return torch.Generator(device=device).manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
