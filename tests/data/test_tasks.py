import ast
import builtins
import json
import keyword
import random

import pytest

from rlwork.data.tasks import EDGE_INPUTS, MIN_TESTS, PRIMITIVES, compositions, make_synthetic_splits, synthetic_task


@pytest.fixture(scope="module")
def splits():
    return make_synthetic_splits(120, 30, seed=3)


def run_reference(code: str, name: str):
    namespace: dict = {}
    exec(code, namespace)
    return namespace[name]


def test_deterministic_in_seed(splits):
    train, heldout = make_synthetic_splits(120, 30, seed=3)
    assert train.to_list() == splits[0].to_list()
    assert heldout.to_list() == splits[1].to_list()
    other, _ = make_synthetic_splits(120, 30, seed=4)
    assert other["reference"] != train["reference"]


def test_rows_follow_the_schema(splits):
    for ds in splits:
        assert set(ds.column_names) == {"prompt", "entry_point", "tests", "task_id", "reference", "composition"}
        assert len(set(ds["task_id"])) == len(ds)
        for row in ds:
            spec = json.loads(row["tests"])
            assert spec["kind"] == "call" and spec["entry_point"] == row["entry_point"]
            assert len(spec["cases"]) >= MIN_TESTS
            assert all(set(c) == {"args", "expected"} and len(c["args"]) == 1 for c in spec["cases"])


def test_reference_passes_its_tests_and_prompt_is_a_stub(splits):
    for ds in splits:
        for row in ds:
            fn = run_reference(row["reference"], row["entry_point"])
            for case in json.loads(row["tests"])["cases"]:
                assert fn(*case["args"]) == case["expected"], (row["task_id"], case)
            tree = ast.parse(row["prompt"])
            assert [n.name for n in tree.body if isinstance(n, ast.FunctionDef)] == [row["entry_point"]]
            assert row["prompt"].splitlines()[0] == row["reference"].splitlines()[0]  # same signature


def test_tests_include_edge_cases(splits):
    for row in splits[0]:
        args = [c["args"][0] for c in json.loads(row["tests"])["cases"]]
        src = PRIMITIVES[row["composition"].split("|")[0]].src
        edges = [x for x in EDGE_INPUTS[src] if x in args]
        assert len(edges) >= 3, row["task_id"]  # e.g. [], 0, -1, "" survive (only huge outputs are dropped)
        assert len({json.dumps(c["expected"]) for c in json.loads(row["tests"])["cases"]}) >= 3


def test_programs_are_short_and_canonical(splits):
    for row in splits[0]:
        lines = row["reference"].splitlines()
        assert 2 <= len(lines) <= 4 and all(len(line) <= 60 for line in lines), row["reference"]
        assert ast.unparse(ast.parse(row["reference"])) + "\n" == row["reference"]  # canonical formatting
        name = row["entry_point"]
        assert not keyword.iskeyword(name) and not hasattr(builtins, name)  # a builtin name would recurse


def test_prompt_describes_every_step(splits):
    row = next(r for r in splits[0] if r["composition"].count("|") == 2)
    doc = ast.get_docstring(ast.parse(row["prompt"]).body[0])
    assert doc.count(", then ") == 2
    assert f">>> {row['entry_point']}(" in doc


def mutants(row: dict):
    """Programs one edit away from the reference: each constant off by one, each step dropped."""
    ref = row["reference"]
    body = ref.splitlines()[1:]
    for i, line in enumerate(body):
        for old, new in [(" + ", " - "), ("* 2", "* 3"), ("* 3", "* 4"), ("% 2 == 0", "% 2 == 1"), ("> ", ">= ")]:
            if old in line:
                yield ref.replace(line, line.replace(old, new, 1))
        if len(body) > 1 and i < len(body) - 1:  # drop an intermediate step
            yield "\n".join([ref.splitlines()[0], *body[:i], *body[i + 1:]]) + "\n"


def test_wrong_programs_fail_some_test(splits):
    checked = 0
    for row in splits[0]:
        cases = json.loads(row["tests"])["cases"]
        for code in mutants(row):
            try:
                fn = run_reference(code, row["entry_point"])
                passes_all = all(fn(*c["args"]) == c["expected"] for c in cases)
            except Exception:
                passes_all = False
            if code != row["reference"]:
                checked += 1
                assert not passes_all or _equivalent(code, row), (row["reference"], code)
    assert checked > 50


def _equivalent(code: str, row: dict) -> bool:
    """Some mutants are the same function (e.g. dropping a sort before a sum); check on many random inputs."""
    src = PRIMITIVES[row["composition"].split("|")[0]].src
    ref, mut = run_reference(row["reference"], row["entry_point"]), run_reference(code, row["entry_point"])
    rng = random.Random(0)
    draw = {"int": lambda: rng.randint(-99, 99), "str": lambda: "".join(rng.choices("abcdeABC", k=rng.randint(0, 8))),
            "list": lambda: rng.choices(range(-9, 21), k=rng.randint(0, 7))}[src]
    return all(ref(x) == mut(x) for x in (draw() for _ in range(300)))


def test_heldout_needs_new_compositions_of_known_primitives(splits):
    train, heldout = splits
    train_comps = set(train["composition"])
    train_prims = {p for c in train_comps for p in c.split("|")}
    assert len(heldout) == 30
    for row in heldout:
        assert row["composition"] not in train_comps  # never the same (composition, constants) as train
        assert row["reference"] not in set(train["reference"])
        assert set(row["composition"].split("|")) <= train_prims  # built only from primitives seen in training
        assert "|" in row["composition"]


def test_heldout_does_not_behave_like_a_train_task(splits):
    train, heldout = splits
    train_fns = [(run_reference(r["reference"], r["entry_point"]), r["composition"].split("|")[0]) for r in train]
    for row in heldout:
        cases = json.loads(row["tests"])["cases"]
        src = row["composition"].split("|")[0]
        for fn, train_src in train_fns:
            if PRIMITIVES[train_src].src != PRIMITIVES[src].src:
                continue
            try:
                same = all(fn(*c["args"]) == c["expected"] for c in cases)
            except Exception:
                same = False
            assert not same, row["task_id"]


def test_compositions_are_well_typed():
    comps = compositions()
    assert len(comps) == len(set(comps)) and {len(c) for c in comps} == {1, 2, 3}
    for c in comps:
        for a, b in zip(c, c[1:], strict=False):
            assert PRIMITIVES[a].dst == PRIMITIVES[b].src and a != b


def test_degenerate_draws_are_rejected():
    # a step that never changes anything on these inputs: upper-casing a string of digits
    assert all(synthetic_task(("to_str", "upper", "length"), random.Random(i)) is None for i in range(5))
    assert synthetic_task(("evens", "total"), random.Random(0)) is not None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_train": 0, "n_heldout": 5}, "n_train"),
    ({"n_train": 5, "n_heldout": -1}, "n_heldout"),
    ({"n_train": 5, "n_heldout": 5, "heldout_frac": 1.0}, "heldout_frac"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_splits(**kwargs)


@pytest.mark.parametrize("fresh", [False, True])
def test_unseen_splits_share_no_program_with_training_or_each_other(fresh):
    from rlwork.data.splits import synthetic_splits
    from rlwork.data.tasks import _fingerprint

    splits = synthetic_splits(300, 40, seed=3, fresh=fresh, n_rl=60)
    assert [len(splits[k]) for k in ("iid", "valid", "rl", "heldout")] == [40, 40, 60, 40]
    assert len(splits["train"]) == 300
    prints = {k: {_fingerprint(r) for r in v} for k, v in splits.items()}
    code = {k: {r["reference"] for r in v} for k, v in splits.items()}
    for name in ("iid", "valid", "rl", "heldout"):
        assert not prints[name] & prints["train"] and not code[name] & code["train"], name
    for a, b in (("iid", "valid"), ("iid", "rl"), ("valid", "rl")):
        assert not prints[a] & prints[b], (a, b)
    assert len(prints["iid"]) == 40  # distinct programs within a split
    if not fresh:  # the distinct mode's train split is make_synthetic_splits's, unchanged
        from rlwork.data.tasks import make_synthetic_splits

        assert list(splits["train"]) == make_synthetic_splits(300, 40, seed=3)[0].to_list()


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_the_distinct_train_and_heldout_splits_are_served_without_drawing_the_reserved_ones(split):
    from rlwork.data.splits import synthetic_split, synthetic_splits

    fast = synthetic_split(split, 300, 40, seed=3, n_rl=60)
    assert fast == [dict(r) for r in synthetic_splits(300, 40, seed=3, n_rl=60)[split]]


def test_prompt_variants_keep_every_task_solvable_and_say_the_program_only_in_the_docstring():
    """examples=false drops the docstring's example; names=neutral names every function `solve` (the step names in
    the signature told the model the program without the docstring). The reference still passes its tests, the
    sentence is untouched (its words include step names such as 'add'), and the task is the same otherwise."""
    from rlwork.data.splits import NEUTRAL_NAME, synthetic_split

    plain = synthetic_split("valid", 40, 20, seed=3, fresh=True, n_rl=20)
    variant = synthetic_split("valid", 40, 20, seed=3, fresh=True, n_rl=20, examples=False, names="neutral")
    assert len(plain) == len(variant) > 0
    for before, row in zip(plain, variant, strict=True):
        assert row["entry_point"] == json.loads(row["tests"])["entry_point"] == NEUTRAL_NAME
        assert json.loads(row["tests"])["cases"] == json.loads(before["tests"])["cases"]
        fn = run_reference(row["reference"], NEUTRAL_NAME)
        for case in json.loads(row["tests"])["cases"]:
            assert fn(*case["args"]) == case["expected"], (row["task_id"], case)
        tree = ast.parse(row["prompt"])
        assert [n.name for n in tree.body if isinstance(n, ast.FunctionDef)] == [NEUTRAL_NAME]
        assert row["prompt"].splitlines()[0] == row["reference"].splitlines()[0]
        sentence = before["prompt"].split('"""')[1].split("\n\n")[0]
        assert row["prompt"].split('"""')[1] == sentence + "\n    "  # the sentence alone, word for word
        assert ">>>" in before["prompt"] and ">>>" not in row["prompt"]
        if before["entry_point"] not in sentence.lower():  # a one-step name such as 'add' is also a word of it
            assert before["entry_point"] not in row["prompt"]
        assert row["reference"].split("\n", 1)[1] == before["reference"].split("\n", 1)[1]  # the same body
    with pytest.raises(ValueError, match="names='short': use one of steps, neutral"):
        synthetic_split("valid", 40, 20, seed=3, fresh=True, n_rl=20, names="short")
    named = synthetic_split("valid", 40, 20, seed=3, fresh=True, n_rl=20, names="neutral")
    assert all(">>> solve(" in r["prompt"] for r in named)  # the example calls the renamed function


def test_distinct_draws_are_the_first_distinct_rows_of_the_fresh_sequence_and_stop_there(monkeypatch):
    """`_draw_distinct` takes rows lazily: the same rows as filtering a long eager draw (so splits and warm-start
    keys made before it stay the same), without generating the 60n + 1000 draws its cap allows."""
    import random

    import rlwork.data.splits as splits
    from rlwork.data.tasks import _by_len, _fingerprint, compositions

    by_len = _by_len(compositions(2))
    keep = lambda row: True  # noqa: E731
    eager, seen = [], set()
    for row in splits._draw_fresh(by_len, 400, random.Random("ref"), "s", keep):
        if _fingerprint(row) not in seen:
            seen.add(_fingerprint(row))
            eager.append(row["reference"])
    made = []
    real = splits.synthetic_task
    monkeypatch.setattr(splits, "synthetic_task", lambda *a, **k: made.append(1) or real(*a, **k))
    lazy = splits._draw_distinct(by_len, 20, random.Random("ref"), "s", keep, set())
    assert [r["reference"] for r in lazy] == eager[:20]
    assert len(made) < 200, f"{len(made)} tasks generated for 20 distinct ones: the draw is not lazy"
