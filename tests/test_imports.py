"""The package's import graph has no cycle, and no module imports another module's private name.

Every `import` / `from ... import` anywhere in a module counts, function-level ones included: a
deferred import avoids the crash at import time but the two modules still depend on each other
(and a later edit moving the import to the top would fail). Imports under `if TYPE_CHECKING:`
are left out (they never run), and so are those under `if __name__ == "__main__":` (they run
only when the file is the program, loaded as `__main__`, not as the package module, so no two
package modules wait on each other: `python -m yolox_jax.data.preview` imports the CLI).
`from pkg import name` is an edge to the module `pkg.name` when that is a module, else to
`pkg`; package `__init__`s reached implicitly are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "yolox_jax"

# Cycles that need an edit in a file another branch owns (issue 16 phase 2), each with that edit.
# The test fails if one of them disappears (update this list) or if any other cycle appears.
KNOWN: dict[frozenset[str], str] = {}
# Private names imported across modules in files another branch owns (phase 2).
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        test = ast.unparse(node.test) if isinstance(node, ast.If) else ""
        if "TYPE_CHECKING" in test or test in ('__name__ == "__main__"', "__name__ == '__main__'"):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    return skip


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import in the module's source."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".") if is_pkg else name.split(".")[:-1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None) if sub in known else (base, a.name))
    return [(m, n) for m, n in out if m == "yolox_jax" or m.startswith("yolox_jax.")]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t, _ in imports(m, p, known) if t in known and t != m}
            for m, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_function_level_imports():
    g = graph()
    assert "yolox_jax.train.checkpointing" in g["yolox_jax.weights.checkpoint"]  # inside a def
    assert "yolox_jax.data.readers" in g["yolox_jax.data.datasets"]  # `from pkg import module`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles():
    found = set(cycles(graph()))
    new = found - set(KNOWN)
    assert not new, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)
    fixed = set(KNOWN) - found
    assert not fixed, f"fixed, remove from KNOWN: {fixed}"


def test_no_private_names_across_modules():
    known = modules()
    bad = set()
    for m, p in known.items():
        for target, name in imports(m, p, known):
            if name and name.startswith("_") and not name.startswith("__") and target != m:
                bad.add((m, target, name))
    assert bad - KNOWN_PRIVATE == set(), sorted(bad - KNOWN_PRIVATE)
    assert KNOWN_PRIVATE <= bad, f"fixed, remove from KNOWN_PRIVATE: {KNOWN_PRIVATE - bad}"


def test_config_lists_the_values_the_training_code_accepts():
    """validate_config checks against config.SCHEDULERS / ASSIGNMENT_RULES (config must not
    import train/); optim imports SCHEDULERS, simota defines RULES until it imports these."""
    from yolox_jax import config
    from yolox_jax.train import optim, simota

    assert config.SCHEDULERS == optim.SCHEDULERS
    assert config.ASSIGNMENT_RULES == simota.RULES
