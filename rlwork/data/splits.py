"""Splits of the synthetic family beyond train/compositional held-out (issue 15): i.i.d. held-out, validation and
RL prompts made of programs never seen in training, and fresh (unlimited) training draws.

The program space is small at the short end (142 one-step, ~4.5k two-step, ~233k three-step programs), so "a task
distinct from every training task" has to be arranged: with `fresh=True` a hash of each program's behaviour
fingerprint reserves `RESERVED_FRAC` of the program space, SFT draws never take a reserved program, and iid / valid /
rl are distinct reserved programs dealt out of one sequence of draws (exchangeable splits of one distribution).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import random
from collections.abc import Iterator

from rlwork.data.schema import DataError
from rlwork.data.tasks import _by_len, _fingerprint, _sample_tasks, compositions, make_synthetic_splits, synthetic_task

TRAIN_WEIGHTS = {1: 0.2, 2: 0.45, 3: 0.35}
"""Composition lengths of a training draw (and of an iid / valid / rl draw)."""
RESERVED_FRAC = 0.2
"""fresh=True: the share of the program space (by behaviour fingerprint) kept out of training for iid/valid/rl."""
SPLITS = ("train", "heldout", "iid", "valid", "rl")
RESERVED = ("iid", "valid", "rl")
"""Splits of programs never in training, drawn alike."""


def _pools(seed: int, heldout_frac: float) -> tuple[list, list]:
    """(train compositions, held-out compositions) of a seed: make_synthetic_splits's partition."""
    multi = [c for c in compositions() if len(c) > 1]
    random.Random(f"{seed}:split").shuffle(multi)
    n_held = int(len(multi) * heldout_frac)
    return [c for c in compositions() if len(c) == 1] + multi[n_held:], multi[:n_held]


def _reserved(row: dict, seed: int) -> bool:
    """Whether a task's program lies in the seed's reserved share of the program space: a hash of its behaviour
    fingerprint, so the partition is independent of how often the generator draws a program."""
    return _reserved_fp(_fingerprint(row), seed)


@functools.lru_cache(maxsize=1 << 17)
def _reserved_fp(fingerprint: str, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:reserve:{fingerprint}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < RESERVED_FRAC


def _reserve_splits(by_len: dict[int, list], sizes: dict[str, int], seed: int, keep, avoid: set[str]) -> dict:
    """Distinct unseen tasks for the RESERVED splits, drawn as one sequence and dealt out by a seeded shuffle, so
    the splits are exchangeable (the first split drawn does not take the programs the generator draws most)."""
    rows = _draw_distinct(by_len, sum(sizes.values()), random.Random(f"{seed}:reserved"), "reserved", keep, avoid)
    random.Random(f"{seed}:deal").shuffle(rows)
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = [{**row, "task_id": f"synthetic/{name}/{i}"} for i, row in enumerate(rows[start:start + n])]
        start += n
    return out


def _fresh_rows(pool_by_len: dict[int, list], rng: random.Random, split: str, keep,
                weights: dict[int, float] | None = None) -> Iterator[dict]:
    """Endless i.i.d. draws from the generator (a task may repeat), each with keep(row) true; weights: composition
    lengths (default TRAIN_WEIGHTS, the generator's). Lazy: a caller that stops early pays only for what it took."""
    weights = weights or TRAIN_WEIGHTS
    lengths = sorted(k for k in weights if pool_by_len.get(k))
    taken = 0
    while True:
        length = rng.choices(lengths, weights=[weights[k] for k in lengths])[0]
        row = synthetic_task(rng.choice(pool_by_len[length]), rng, task_id=f"synthetic/{split}/{taken}")
        if row is not None and keep(row):
            taken += 1
            yield row


def _draw_fresh(pool_by_len: dict[int, list], n: int, rng: random.Random, split: str, keep,
                weights: dict[int, float] | None = None) -> list[dict]:
    """The first n of `_fresh_rows`."""
    return list(itertools.islice(_fresh_rows(pool_by_len, rng, split, keep, weights), n))


def _draw_distinct(pool_by_len: dict[int, list], n: int, rng: random.Random, split: str, keep,
                   avoid: set[str]) -> list[dict]:
    """n draws from the generator with keep(row) true and a behaviour fingerprint not in `avoid` (which each taken
    task joins): the generator's distribution restricted to `keep`, each program once. Gives up after 60n + 1000
    draws."""
    rows: list[dict] = []
    for row in itertools.islice(_fresh_rows(pool_by_len, rng, split, keep), 60 * n + 1000):
        fp = _fingerprint(row)
        if fp not in avoid:
            avoid.add(fp)
            rows.append({**row, "task_id": f"synthetic/{split}/{len(rows)}"})
            if len(rows) == n:
                return rows
    raise ValueError(f"could only make {len(rows)} distinct {split} tasks of {n}; ask for fewer")


@functools.lru_cache(maxsize=2)
def synthetic_splits(n_train: int, n_heldout: int, seed: int = 0, fresh: bool = False, n_rl: int = 0,
                     heldout_frac: float = 0.25, train_mix: tuple[float, ...] | None = None
                     ) -> dict[str, tuple[dict, ...]]:
    """Every split of the synthetic family for one seed: name -> rows (cached; treat the rows as read-only).

    - train: the SFT tasks. fresh=False: n_train distinct tasks, exactly `make_synthetic_splits`'s; each SFT epoch
      repeats them. fresh=True: n_train i.i.d. draws from the generator restricted to the programs outside the
      seed's reserved share (RESERVED_FRAC of the program space, by a hash of the behaviour fingerprint); with
      sft.steps x sft.batch_size draws every batch is fresh (short programs recur, as they do in the generator).
      train_mix: weights of 1-, 2- and 3-step compositions in these draws (None: the generator's TRAIN_WEIGHTS).
    - heldout: the compositional split of `make_synthetic_splits` (compositions never in train), n_heldout tasks.
    - iid, valid (n_heldout each) and rl (n_rl): programs never in training, drawn alike (`RESERVED`), each program
      once and in one split only, dealt out of one sequence of draws at random. fresh=True: draws from the
      generator restricted to the reserved share (the same distribution as train, on the other programs).
      fresh=False: draws after the distinct training tasks, rejecting their programs. iid is the held-out split;
      choose settings on valid; rl holds RL prompts, so the reward on them estimates pass@1 on iid.
    """
    train_pool, held_pool = _pools(seed, heldout_frac)
    by_len = _by_len(train_pool)
    out: dict[str, list[dict]] = {}
    sizes = {"iid": n_heldout, "valid": n_heldout, "rl": n_rl}
    if fresh:
        out.update(_reserve_splits(by_len, sizes, seed, lambda row: _reserved(row, seed), set()))
        out["train"] = _draw_fresh(by_len, n_train, random.Random(f"{seed}:train"), "train",
                                   lambda row: not _reserved(row, seed),
                                   dict(enumerate(train_mix, start=1)) if train_mix else None)
        train_fps = {_fingerprint(r) for r in out["train"]}
        known = {p for r in out["train"] for p in r["composition"].split("|")}
        held = _by_len([c for c in held_pool if known.issuperset(c)])
        seen = {r["reference"] for k in ("train", *RESERVED) for r in out[k]}
        out["heldout"] = _sample_tasks(held, {2: 0.5, 3: 0.5}, n_heldout, random.Random(f"{seed}:heldout"), "heldout",
                                       seen, train_fps)
    else:
        train, heldout = make_synthetic_splits(n_train, n_heldout, seed, heldout_frac)
        out["train"], out["heldout"] = train.to_list(), heldout.to_list()
        avoid = {_fingerprint(r) for r in out["train"] + out["heldout"]}
        out.update(_reserve_splits(by_len, sizes, seed, lambda row: True, avoid))
    return {k: tuple(v) for k, v in out.items()}


def synthetic_split(split: str, n_train: int, n_heldout: int, seed: int = 0, fresh: bool = False,
                    n_rl: int = 0, train_mix: tuple[float, ...] | None = None, examples: bool = True,
                    names: str = "steps") -> list[dict]:
    """One split of `synthetic_splits` (fresh copies of the rows); examples=False drops the docstring's example,
    names="neutral" names every function `NEUTRAL_NAME` (`with_neutral_name`)."""
    if names not in SYNTHETIC_NAMES:
        raise DataError(f"synthetic names={names!r}: use one of {', '.join(SYNTHETIC_NAMES)}")
    if split not in SPLITS:
        raise DataError(f"synthetic split={split!r}: use one of {', '.join(SPLITS)}")
    if not fresh and split in ("train", "heldout"):  # drawn first: no need to draw (and fingerprint) the reserved
        rows = make_synthetic_splits(n_train, n_heldout, seed)[split == "heldout"].to_list()  # splits behind them
    else:
        rows = synthetic_splits(n_train, n_heldout, seed, fresh, n_rl,
                                train_mix=tuple(train_mix) if train_mix else None)[split]
    rows = [dict(r) if examples else without_example(r) for r in rows]
    return [with_neutral_name(r) for r in rows] if names == "neutral" else rows


def without_example(row: dict) -> dict:
    """The task with its docstring cut to the sentence that says the steps (the `>>>` example dropped): a simpler
    prompt whose only numbers are the constants the program needs. Tests and reference are unchanged."""
    head, sep, _ = row["prompt"].partition("\n\n    >>> ")
    if not sep:
        return dict(row)
    return {**row, "prompt": f'{head}\n    """\n'}


SYNTHETIC_NAMES = ("steps", "neutral")
NEUTRAL_NAME = "solve"


def with_neutral_name(row: dict) -> dict:
    """The task with its function named `NEUTRAL_NAME` in the prompt (signature and example), reference and tests.

    The generator names a function after its steps (`evens_head`): the name alone tells a model which templates to
    write, and a warm start trained on such names follows the name where it and the docstring disagree (README,
    lab notebook). With one name for every task the docstring is the only place the program is said. (It does not
    make SFT copy the docstring's constants: that was measured separately, with `bench/copy_probe.py`.)"""
    name = row["entry_point"]
    tests = json.loads(row["tests"])
    tests["entry_point"] = NEUTRAL_NAME
    prompt = row["prompt"].replace(f"def {name}(", f"def {NEUTRAL_NAME}(", 1).replace(f">>> {name}(",
                                                                                    f">>> {NEUTRAL_NAME}(", 1)
    return {**row, "prompt": prompt, "reference": row["reference"].replace(f"def {name}(", f"def {NEUTRAL_NAME}(", 1),
            "entry_point": NEUTRAL_NAME, "tests": json.dumps(tests)}
