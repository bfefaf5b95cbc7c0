"""What produced an output: the project source files a module runs, their digest, and their commit.

A stage's result depends on the code it runs as much as on its params and data. DVC reruns a stage
when one of its `dvc.yaml` deps changes, but state that outlives a run has to tell for itself:
  * a training checkpoint (`trainer.train.checkpoint.fingerprint`) must not be resumed by other code,
    or a rerun after a code change would resume the finished run and export the old weights;
  * the evaluation's embedding cache must not serve vectors computed by other encoding code.
`source_digest(module)` is that identity: sha256 over the module's file and every project module
it imports, transitively (a static walk of every import statement, top level or inside functions,
so lazy imports count), by relative path and code (the syntax tree, so comments and docstrings
do not count).

`git_commit(files)` is the last commit that changed any of those files, not HEAD: committing
unrelated things (dvc.lock, metrics, docs) leaves it, and so the lineage that records it, unchanged.
`dirty(files)` says whether the files differ from that commit (uncommitted edits).
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "stages", "trainer")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file of dotted module `name` in one of the project's packages under `root`, else None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imported_files(path: Path, root: Path = REPO) -> set[Path]:
    """Project files imported anywhere in `path` (top level or inside functions); `from pkg import x`
    counts pkg.x when that is a module. A package's `__init__` counts when it holds code (e.g. it
    hands on `generate` from a module of its own), not when it is empty."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if (f := module_file(name, root)) is not None and (f.name != "__init__.py" or _has_code(f)):
                found.add(f)
    return found


def _has_code(path: Path) -> bool:
    """Whether a file holds anything but a docstring (an empty package `__init__` does not)."""
    body = ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def source_files(start: str | Path, root: Path = REPO) -> list[Path]:
    """`start` (a dotted module name or a file) and every project file it imports, transitively;
    sorted."""
    first = Path(start) if isinstance(start, Path) else module_file(start, root)
    if first is None:
        raise ValueError(f"{start!r} is not a module of {PACKAGES} under {root}")
    seen, todo = set(), [first]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path, root) - seen)
    return sorted(seen)


def code_of(path: Path) -> str:
    """The code of a Python file without its comments, docstrings and layout (its syntax tree):
    editing those does not change what runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def source_digest(start: str | Path, root: Path = REPO) -> str:
    """sha256 over the relative paths and the code (`code_of`) of `source_files(start)`: a comment
    or docstring edit keeps the digest (and so a long run's checkpoints), a code edit changes it."""
    h = hashlib.sha256()
    for path in source_files(start, root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + code_of(path).encode() + b"\0")
    return h.hexdigest()


def _git(*args: str, root: Path = REPO) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except OSError:  # no git
        return None


def git_commit(files: list[Path], root: Path = REPO) -> str | None:
    """The last commit that changed any of `files`; None outside a git checkout or for files git
    does not know."""
    done = _git("log", "-1", "--format=%H", "--", *(str(f.relative_to(root)) for f in files), root=root)
    return (done.stdout.strip() or None) if done is not None and done.returncode == 0 else None


def dirty(files: list[Path], root: Path = REPO) -> bool | None:
    """Whether `files` differ from HEAD (uncommitted edits or untracked files); None without git."""
    names = [str(f.relative_to(root)) for f in files]
    done = _git("status", "--porcelain", "--", *names, root=root)
    return bool(done.stdout.strip()) if done is not None and done.returncode == 0 else None
