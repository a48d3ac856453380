"""Synthetic task family for the embedded demo: short Python functions chaining 1-3 typed primitives.

A task is a composition such as ("evens", "scale", "total") with drawn constants, rendered as

    def evens_scale_total(x: list[int]) -> int:
        x = [v for v in x if v % 2 == 0]
        x = [v * 3 for v in x]
        return sum(x)

The prompt is the signature plus a docstring that says each step in words and shows one example; the
reference above is the SFT warm-start target. Expected values come from executing the reference in
this process: it is code we generate from the fixed grammar below, never model output.

Held-out split: multi-step compositions are partitioned, so a held-out task's composition (the
sequence of primitive names, constants aside) never occurs in the train split, while each of its
primitives does. Solving it needs composing known steps in a new order, not recalling a seen program.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

MIN_TESTS = 8
NUM_INPUTS = 12  # candidates drawn per task; inputs whose output is too large or raises are dropped
MAX_INT = 10**6
MAX_LEN = 40
TYPE_HINTS = {"int": "int", "str": "str", "list": "list[int]"}


@dataclass(frozen=True)
class Primitive:
    """One transformation step. code/phrase are format templates over the drawn constants a and b."""

    name: str
    src: str
    dst: str
    code: str
    phrase: str
    a: tuple = ()
    b: tuple = ()


_P = Primitive
_DIGITS = tuple(range(1, 10))
PRIMITIVES: dict[str, Primitive] = {
    p.name: p
    for p in [
        # int -> int
        _P("affine", "int", "int", "x * {a} + {b}", "multiply by {a} and add {b}", (2, 3, 4, 5), _DIGITS),
        _P("add", "int", "int", "x + {a}", "add {a}", _DIGITS),
        _P("sub", "int", "int", "x - {a}", "subtract {a}", _DIGITS),
        _P("mod", "int", "int", "x % {a}", "take the remainder modulo {a}", (2, 3, 4, 5, 6, 7, 8, 9)),
        _P("div", "int", "int", "x // {a}", "floor-divide by {a}", (2, 3, 4, 5)),
        _P("absval", "int", "int", "abs(x)", "take the absolute value"),
        _P("square", "int", "int", "x * x", "square it"),
        _P("negate", "int", "int", "-x", "negate it"),
        # int -> str / list
        _P("to_str", "int", "str", "str(x)", "convert it to a string"),
        _P("digits", "int", "list", "[int(c) for c in str(abs(x))]", "list the digits of its absolute value"),
        # list -> list
        _P("rev", "list", "list", "x[::-1]", "reverse the list"),
        _P("evens", "list", "list", "[v for v in x if v % 2 == 0]", "keep the even numbers"),
        _P("odds", "list", "list", "[v for v in x if v % 2 == 1]", "keep the odd numbers"),
        _P("above", "list", "list", "[v for v in x if v > {a}]", "keep the numbers greater than {a}",
           (-2, -1, 0, 1, 2, 3, 4, 5)),
        _P("scale", "list", "list", "[v * {a} for v in x]", "multiply each number by {a}", (2, 3, 4, 5)),
        _P("shift", "list", "list", "[v + {a} for v in x]", "add {a} to each number", _DIGITS),
        _P("squares", "list", "list", "[v * v for v in x]", "square each number"),
        _P("ordered", "list", "list", "sorted(x)", "sort the list in increasing order"),
        _P("head", "list", "list", "x[:{a}]", "keep the first {a} numbers", (1, 2, 3, 4)),
        _P("tail", "list", "list", "x[{a}:]", "drop the first {a} numbers", (1, 2, 3)),
        _P("every2", "list", "list", "x[::2]", "keep every second number, starting with the first"),
        # list -> int
        _P("total", "list", "int", "sum(x)", "take the sum"),
        _P("size", "list", "int", "len(x)", "count the numbers"),
        _P("largest", "list", "int", "max(x, default=0)", "take the largest number (0 if there is none)"),
        _P("smallest", "list", "int", "min(x, default=0)", "take the smallest number (0 if there is none)"),
        _P("count", "list", "int", "x.count({a})", "count how many times {a} occurs", (0, 1, 2, 3)),
        # str -> str
        _P("upper", "str", "str", "x.upper()", "convert it to upper case"),
        _P("lower", "str", "str", "x.lower()", "convert it to lower case"),
        _P("srev", "str", "str", "x[::-1]", "reverse the string"),
        _P("swap", "str", "str", "x.replace({a!r}, {b!r})", "replace every '{a}' with '{b}'",
           tuple("abcde"), tuple("xyz")),
        _P("prefix", "str", "str", "x[:{a}]", "keep the first {a} characters", (2, 3, 4)),
        _P("severy2", "str", "str", "x[::2]", "keep every second character, starting with the first"),
        _P("twice", "str", "str", "x * 2", "repeat it twice"),
        # str -> int
        _P("length", "str", "int", "len(x)", "take the length"),
        _P("chars", "str", "int", "x.count({a!r})", "count the occurrences of '{a}'", tuple("abcde")),
    ]
}

EDGE_INPUTS = {"int": [0, 1, -1, 7, -12], "list": [[], [0], [-3], [2, 2, 5]], "str": ["", "a", "B", "abcab"]}


def compositions(max_steps: int = 3) -> list[tuple[str, ...]]:
    """All well-typed chains of 1..max_steps primitive names, no primitive twice in a row, sorted."""
    chains = [(p.name,) for p in PRIMITIVES.values()]
    frontier = chains
    for _ in range(max_steps - 1):
        frontier = [
            (*c, p.name)
            for c in frontier
            for p in PRIMITIVES.values()
            if p.src == PRIMITIVES[c[-1]].dst and p.name != c[-1]
        ]
        chains = chains + frontier
    return sorted(chains)


def _draw_input(kind: str, rng: random.Random):
    if kind == "int":
        return rng.randint(-99, 99)
    if kind == "list":
        return [rng.randint(-9, 20) for _ in range(rng.randint(2, 7))]
    return "".join(rng.choice("abcdeABC") for _ in range(rng.randint(2, 8)))


def _render(composition: Sequence[str], consts: Sequence[dict]) -> tuple[str, str, str]:
    """(entry_point, signature line, reference code) of a composition with its drawn constants."""
    steps = [PRIMITIVES[n] for n in composition]
    name = "_".join(composition)
    sig = f"def {name}(x: {TYPE_HINTS[steps[0].src]}) -> {TYPE_HINTS[steps[-1].dst]}:"
    exprs = [p.code.format(**c) for p, c in zip(steps, consts, strict=True)]
    body = [f"    x = {e}" for e in exprs[:-1]] + [f"    return {exprs[-1]}"]
    return name, sig, "\n".join([sig, *body]) + "\n"


@functools.lru_cache(maxsize=1 << 16)  # a fresh-draw stream repeats programs (and their step-dropped variants)
def _compile(code: str, name: str):
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 -- our own grammar's code, see the module docstring
    return namespace[name]


def _run(code: str, name: str, inputs: list) -> list:
    """Outputs of trusted generated code per input; None where it raises or the value is out of bounds."""
    return _outputs(_compile(code, name), inputs)


def _outputs(fn, inputs: list) -> list:
    outputs = []
    for x in inputs:
        try:
            y = fn(json.loads(json.dumps(x)))  # a fresh copy: steps must not see each other's mutations
        except Exception:
            outputs.append(None)
            continue
        too_big = (isinstance(y, int) and abs(y) > MAX_INT) or (isinstance(y, (str, list)) and len(y) > MAX_LEN)
        too_big = too_big or (isinstance(y, list) and any(abs(v) > MAX_INT for v in y))
        outputs.append(None if too_big else y)
    return outputs


def _every_step_matters(composition, consts, inputs, outputs) -> bool:
    """False if dropping one step (where the types still chain) leaves every output unchanged."""
    for i, p in enumerate(PRIMITIVES[n] for n in composition):
        if len(composition) == 1 or p.src != p.dst:
            continue
        rest, rest_consts = composition[:i] + composition[i + 1:], consts[:i] + consts[i + 1:]
        name, _, code = _render(rest, rest_consts)
        if _run(code, name, inputs) == outputs:
            return False
    return True


def synthetic_task(composition: Sequence[str], rng: random.Random, task_id: str = "synthetic") -> dict | None:
    """One problem in the shared schema for a composition, constants and inputs drawn from rng.

    Returns None when the draw is degenerate: fewer than MIN_TESTS usable inputs, fewer than 3 distinct
    outputs, or a step that changes nothing on the inputs (so a shorter program would pass all tests).
    """
    composition = tuple(composition)
    steps = [PRIMITIVES[n] for n in composition]
    consts = [{"a": rng.choice(p.a) if p.a else None, "b": rng.choice(p.b) if p.b else None} for p in steps]
    name, sig, reference = _render(composition, consts)
    src = steps[0].src
    inputs = list(EDGE_INPUTS[src])
    while len(inputs) < NUM_INPUTS:
        x = _draw_input(src, rng)
        if x not in inputs:
            inputs.append(x)
    outputs = _run(reference, name, inputs)
    kept = [(x, y) for x, y in zip(inputs, outputs, strict=True) if y is not None]
    if len(kept) < MIN_TESTS or len({json.dumps(y) for _, y in kept}) < 3:
        return None
    inputs, outputs = [x for x, _ in kept], [y for _, y in kept]
    if not _every_step_matters(composition, consts, inputs, outputs):
        return None
    words = [p.phrase.format(**c) for p, c in zip(steps, consts, strict=True)]
    doc = ", then ".join(words)
    example = max(kept[len(EDGE_INPUTS[src]):] or kept, key=lambda xy: len(json.dumps(xy)))  # an informative one
    doc = f"{doc[0].upper()}{doc[1:]}.\n\n    >>> {name}({example[0]!r})\n    {example[1]!r}"
    prompt = f'{sig}\n    """{doc}\n    """\n'
    cases = [{"args": [x], "expected": y} for x, y in kept]
    return {
        "prompt": prompt,
        "entry_point": name,
        "tests": json.dumps({"kind": "call", "entry_point": name, "cases": cases}),
        "task_id": task_id,
        "reference": reference,
        "composition": "|".join(composition),
    }


def _sample_tasks(pool_by_len: dict[int, list], weights: dict[int, float], n: int, rng: random.Random,
                  split: str, seen_code: set[str], avoid: set[str] | None = None) -> list[dict]:
    """n tasks with code not in seen_code and (with avoid) a behaviour fingerprint not in avoid."""
    lengths = [k for k in sorted(weights) if pool_by_len.get(k)]
    if n and not lengths:
        raise ValueError(f"no compositions available for the {split} split; increase n_train")
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could only make {len(rows)} distinct {split} tasks of {n}; ask for fewer")
        length = rng.choices(lengths, weights=[weights[k] for k in lengths])[0]
        row = synthetic_task(rng.choice(pool_by_len[length]), rng, task_id=f"synthetic/{split}/{len(rows)}")
        if row is None or row["reference"] in seen_code:
            continue
        if avoid is None or _fingerprint(row) not in avoid:
            seen_code.add(row["reference"])
            rows.append(row)
    return rows


def make_synthetic_splits(
    n_train: int, n_heldout: int, seed: int = 0, heldout_frac: float = 0.25
) -> tuple[Dataset, Dataset]:
    """Train and held-out synthetic problems, deterministic in seed.

    Single-step compositions are train-only; heldout_frac of the multi-step compositions are reserved
    for held-out, which draws only those whose primitives all occur in the generated train tasks.
    Columns: prompt, entry_point, tests (JSON, kind "call"), task_id, reference, composition.
    """
    if n_train < 1 or n_heldout < 0:
        raise ValueError(f"n_train={n_train}, n_heldout={n_heldout}: need n_train >= 1 and n_heldout >= 0")
    if not 0.0 < heldout_frac < 1.0:
        raise ValueError(f"heldout_frac={heldout_frac}: must be in (0, 1)")
    multi = [c for c in compositions() if len(c) > 1]
    random.Random(f"{seed}:split").shuffle(multi)
    n_held = int(len(multi) * heldout_frac)
    held_pool, train_pool = multi[:n_held], [c for c in compositions() if len(c) == 1] + multi[n_held:]
    seen_code: set[str] = set()
    train = _sample_tasks(_by_len(train_pool), {1: 0.2, 2: 0.45, 3: 0.35}, n_train,
                          random.Random(f"{seed}:train"), "train", seen_code)
    known = {p for row in train for p in row["composition"].split("|")}
    held_pool = [c for c in held_pool if known.issuperset(c)]
    # A held-out task that behaves like a train task (a commuting reorder) would test recall, not composition.
    train_behaviours = {_fingerprint(row) for row in train}
    heldout = _sample_tasks(_by_len(held_pool), {2: 0.5, 3: 0.5}, n_heldout,
                            random.Random(f"{seed}:heldout"), "heldout", seen_code, train_behaviours)
    return Dataset.from_list(train), Dataset.from_list(heldout)


def _fingerprint(row: dict) -> str:
    """The row's input type and outputs on fixed probe inputs: equal fingerprints mean (nearly surely) equal
    behaviour, e.g. "rev|evens" and "evens|rev"."""
    src = PRIMITIVES[row["composition"].split("|")[0]].src
    return _fingerprint_of(row["reference"], row["entry_point"], src)


@functools.lru_cache(maxsize=1 << 16)
def _fingerprint_of(reference: str, entry_point: str, src: str) -> str:
    probe_rng = random.Random(f"probes:{src}")
    probes = EDGE_INPUTS[src] + [_draw_input(src, probe_rng) for _ in range(NUM_INPUTS)]
    return json.dumps([src, _outputs(_compile(reference, entry_point), probes)])


def _by_len(pool: list[tuple[str, ...]]) -> dict[int, list[tuple[str, ...]]]:
    out: dict[int, list[tuple[str, ...]]] = {}
    for c in pool:
        out.setdefault(len(c), []).append(c)
    return out
