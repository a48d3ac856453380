"""Shared fixtures: tiny in-memory models, offline hubs, a shared build cache."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RLWORK_CACHE", str(ROOT / ".cache" / "rlwork"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_lm():
    """The embedded block-causal tiny coder (Stable-DiffCoder layout)."""
    from rlwork.models.lm import load_diffusion_lm

    return load_diffusion_lm("tiny", "stable-diffcoder")


@pytest.fixture(scope="session")
def tiny_bidir_lm():
    """The embedded bidirectional tiny coder."""
    from rlwork.models.lm import load_diffusion_lm

    return load_diffusion_lm("tiny-bidirectional", "masked-diffusion")


def pytest_configure(config):
    # Tiny models gain nothing from intra-op threads, and two threads on two shared cores can stall each other
    # (seen here: the same work 0.7 s or 24 s). One thread keeps the suite's time predictable.
    import torch

    torch.set_num_threads(1)
