"""The house rules, checked: each stage's dvc.yaml deps are the modules its code imports (so an edit
reruns exactly what it affects), the library never imports the stages, and stages stay thin."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from tests.conftest import ROOT
from tests.generated import section


def _imports(path: Path, root: Path) -> set[Path]:
    """Project modules a module imports (top-level and inside functions), as paths under root."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            for candidate in (root / (name.replace(".", "/") + ".py"), root / name.replace(".", "/") / "__init__.py"):
                if candidate.exists():
                    found.add(candidate.relative_to(root))
    for parent in list(found):  # importing duo.synth.curate runs duo/synth/__init__.py
        for pkg in list(parent.parents)[:-1]:
            if (root / pkg / "__init__.py").exists():
                found.add(pkg / "__init__.py")
    return found


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    """dvc.yaml deps (Python files) equal the import closure of the stage's module, so an edit to any
    module a stage runs reruns it, and nothing else."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = Path(stage["cmd"].split("-m ")[1].split()[0].replace(".", "/") + ".py")
        closure, todo = set(), [module]
        while todo:
            current = todo.pop()
            if current in closure:
                continue
            closure.add(current)
            todo += _imports(ROOT / current, ROOT) - closure
        # duo/__init__.py only names the package (no result depends on it); sub-packages' count
        closure.discard(Path("duo/__init__.py"))
        declared = {Path(d) for d in stage["deps"] if d.endswith(".py")}
        assert declared == closure, (name, sorted(map(str, declared - closure)), sorted(map(str, closure - declared)))


def test_the_library_never_imports_the_stages():
    offenders = []
    for path in sorted((ROOT / "duo").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "stages" or n.startswith("stages.")]
    assert not offenders, offenders


def test_every_stage_is_a_thin_main():
    fat = {p.name: n for p in (ROOT / "stages").glob("*.py") if (n := len(p.read_text().splitlines())) > 60}
    assert not fat, fat


def test_no_import_circle_under_duo():
    """Modules (package __init__ files aside) import each other without a circle, lazily or not: each
    room can be read, and changed, from the bottom up."""
    modules = [p.relative_to(ROOT) for p in (ROOT / "duo").rglob("*.py") if p.name != "__init__.py"]
    edges = {m: {d for d in _imports(ROOT / m, ROOT) if d.parts[0] == "duo" and d.name != "__init__.py" and d != m}
             for m in modules}
    circles, done = [], set()

    def visit(node, path):
        if node in path:
            circles.append([str(p) for p in path[path.index(node):]] + [str(node)])
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, path + [node])
        done.add(node)

    for module in sorted(modules):
        visit(module, [])
    assert not circles, circles


def _gist(path: Path) -> str:
    """A module's docstring up to its first full stop or colon, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return re.split(r"(?<=[a-z)`'])[.](?:\s|$)", " ".join(doc.split()), maxsplit=1)[0]


def layout_map() -> str:
    """The README's map of duo/: each module with the gist of its docstring; each package with its own
    gist and its modules."""
    lines = ["```"]
    for path in sorted((ROOT / "duo").iterdir()):
        if path.suffix == ".py" and path.name != "__init__.py":
            lines.append(f"duo/{path.name:18} {_gist(path)}")
    for path in sorted((ROOT / "duo").iterdir()):
        if (path / "__init__.py").exists():
            modules = " ".join(p.stem for p in sorted(path.glob("*.py")) if p.name != "__init__.py")
            modules += "".join(f" {p.name}/" for p in sorted(path.iterdir()) if (p / "__init__.py").exists())
            lines += [f"duo/{path.name + '/':18} {_gist(path / '__init__.py')}", f"{'':23}{modules}"]
    return "\n".join(lines + ["```", ""])


def test_readme_map_of_duo_is_current():
    section(ROOT / "README.md", "layout", layout_map(), "tests/test_layout.py")
