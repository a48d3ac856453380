"""Shared fixtures: tiny in-memory models, offline hubs, shared build caches.

Tests write only under the temporary directory: run folders under pytest's `tmp_path`, and the caches that outlive
one test (the tiny coders, DeepSpeed's compiled ops, the remote code transformers imports) where the environment
says (RLWORK_CACHE, TORCH_EXTENSIONS_DIR, HF_MODULES_CACHE when set) or else in one folder per user under the
system's temporary directory, which later runs reuse (DeepSpeed's ops compile once).
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
CACHE = Path(tempfile.gettempdir()) / f"rlwork-tests-{os.getuid()}"
os.environ.setdefault("RLWORK_CACHE", str(CACHE / "rlwork"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))  # subprocesses inherit it
os.environ.setdefault("HF_MODULES_CACHE", str(CACHE / "hf_modules"))  # where transformers copies remote code

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
