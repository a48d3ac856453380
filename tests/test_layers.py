"""The import graph of rlwork/: no cycle, no upward import, rl and sft independent, rewards/ torch- and rlwork-free.

Walks every module's imports with `ast` (module-level and function-level alike: a lazy import is still a
dependency) and checks them against the layer order in rlwork/__init__.py.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [("config",), ("data",), ("models",), ("diffusion",), ("runtime",), ("evaluation",), ("rl", "sft"),
          ("demo",), ("cli",)]
"""Lowest first. A module may import its own package and packages of strictly lower layers."""
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {m: {d for d in _imports(p) if d in modules and d != m} for m, p in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rlwork"


def test_every_rlwork_package_has_a_layer():
    packages = {_layer(m) for m in _graph("rlwork")} - {"rlwork"}
    assert packages <= set(RANK), f"packages without a layer in LAYERS: {sorted(packages - set(RANK))}"


def test_imports_only_go_down():
    upward = []
    for module, deps in _graph("rlwork").items():
        for dep in deps:
            src, dst = _layer(module), _layer(dep)
            if src == dst or dst == "rlwork":
                continue
            if src == "rlwork" or RANK[dst] >= RANK[src]:
                upward.append(f"{module} -> {dep}")
    assert not upward, "imports that do not go down the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = _graph("rlwork")
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(m: str, stack: list[str]) -> list[str] | None:
        if state.get(m) == 1:
            return stack[stack.index(m):] + [m]
        if state.get(m) == 2:
            return None
        state[m] = 1
        for d in sorted(graph[m]):
            cycle = visit(d, [*stack, m])
            if cycle:
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        cycle = visit(m, [])
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_rewards_never_import_rlwork_or_torch():
    bad = [f"{_module_name(p)} imports {d}" for p in (ROOT / "rewards").rglob("*.py") for d in _imports(p)
           if d.split(".")[0] in ("rlwork", "torch", "transformers", "tokenizers")]
    assert not bad, "\n".join(bad)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "rlwork").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules (STYLE.md: under ~400 lines): {long}"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The walk is not vacuous: a data module importing the RL trainer is reported."""
    fake = tmp_path / "rlwork" / "data"
    fake.mkdir(parents=True)
    (tmp_path / "rlwork" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("def f():\n    from rlwork.rl.trainer import train\n")
    (tmp_path / "rlwork" / "rl").mkdir()
    (tmp_path / "rlwork" / "rl" / "__init__.py").write_text("")
    (tmp_path / "rlwork" / "rl" / "trainer.py").write_text("def train():\n    pass\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    graph = _graph("rlwork")
    assert graph["rlwork.data.bad"] == {"rlwork.rl.trainer"}
    try:
        test_imports_only_go_down()
    except AssertionError as err:
        assert "rlwork.data.bad -> rlwork.rl.trainer" in str(err)
    else:
        raise AssertionError("an upward import went unreported")
