"""The package's shape: short files, short functions, no import cycle (issue: one shape for every
capability).

- No file in ``python/xmodal`` has more than 450 lines.
- No function has more than 80 lines of code, counting neither its docstring nor blank and
  comment-only lines; functions that build argument parsers (``*parser*`` in the name) are exempt,
  they are declarations, one option a line.
- The modules of ``xmodal`` import one another without a cycle. Every ``import`` counts, also the
  ones inside functions (a lazy import only defers a cycle); ``from .pkg import name`` is an edge to
  the submodule ``pkg.name`` when that is a module, else to the package ``pkg``, and importing a
  submodule also runs its package's ``__init__``, so that is an edge too. Edges from a package's
  ``__init__`` to its own submodules are how a package re-exports its content and do not count as
  a cycle with that submodule's edge back to its package ``__init__`` (Python resolves those).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "xmodal"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
_PARSER_NAME = re.compile(r"parser", re.IGNORECASE)


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of code of a function: not its docstring, not blank, not comment-only."""
    skip = set()
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    n = 0
    for i in range(first, node.end_lineno + 1):
        text = lines[i - 1].strip()
        if i in skip or not text or text.startswith("#"):
            continue
        n += 1
    return n


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for mod, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _PARSER_NAME.search(node.name):
                n = _code_lines(node, lines)
                if n > limit:
                    out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {n} lines")
    return out


def long_files(limit: int = MAX_FILE_LINES) -> list[str]:
    out = []
    for path in _modules().values():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            out.append(f"{path.relative_to(PACKAGE.parent)}: {n} lines")
    return out


def _resolve(mod: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = mod.split(".") if is_package else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def add(src: str, dst: str) -> None:
        # importing a.b.c runs a, a.b and a.b.c
        parts = dst.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in mods and name != src:
                graph[src].add(name)

    for mod, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "xmodal":
                        add(mod, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node.level, node.module)
                if base.split(".")[0] != "xmodal":
                    continue
                add(mod, base)
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:
                        add(mod, f"{base}.{alias.name}")
    # A package's __init__ importing its own submodules, and those submodules importing the package
    # (to reach a sibling), is the normal shape of a package: the edge submodule -> own ancestor
    # package is dropped.
    for mod in graph:
        graph[mod] = {d for d in graph[mod] if not mod.startswith(d + ".")}
    return graph


def import_cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_file_over_450_lines():
    assert long_files() == []


def test_no_function_over_80_lines_of_code():
    assert long_functions() == []


def test_no_import_cycle():
    assert import_cycles() == []


def test_the_checks_can_fail(tmp_path):
    """The counters see what they are meant to see (on a small synthetic module)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    src = f'def f():\n    """doc\n\n    more doc\n    """\n    # a comment\n\n{body}\n'
    tree = ast.parse(src)
    assert _code_lines(tree.body[0], src.splitlines()) == 82  # def line + 81 statements
    assert _resolve("xmodal.a.b", False, 2, "c") == "xmodal.c"
    assert _resolve("xmodal.a", True, 1, "b") == "xmodal.a.b"
