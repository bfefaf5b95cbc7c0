"""dvc.yaml: every project module a stage imports is one of its deps, so that changing it reruns the
stage (a missing dep leaves stale outputs that `dvc repro` calls up to date)."""

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "stages", "trainer")


def module_file(name: str) -> Path | None:
    """The repo file of a dotted module name in one of our packages, else None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imported_files(path: Path) -> set[Path]:
    """Project files imported anywhere in `path` (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # `from trainer import x`
        for name in names:
            if (f := module_file(name)) is not None and f.name != "__init__.py":
                found.add(f)
    return found


def closure(start: Path) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(imported_files(path) - seen)
    return seen


def test_every_imported_project_module_is_a_stage_dep():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        module = stage["cmd"].split("-m", 1)[1].split()[0]
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
        listed = {(REPO / d).resolve() for d in deps}
        needed = closure(module_file(module))
        lacking = sorted(str(p.relative_to(REPO)) for p in needed
                         if p.resolve() not in listed and not any(parent in listed for parent in p.resolve().parents))
        if lacking:
            missing[name] = lacking
    assert not missing, f"dvc.yaml deps lack imported project modules: {missing}"


def test_the_import_walk_sees_lazy_and_package_imports(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("from trainer import image_processing\n\ndef f():\n    import pipelines.images\n")
    assert imported_files(code) == {REPO / "trainer/image_processing.py", REPO / "pipelines/images.py"}


def stage_commands() -> dict[str, str]:
    """dvc.yaml's stage name -> the module its command runs (`python -m stages.<name>`)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: s["cmd"].split("-m ", 1)[1].split()[0] for name, s in stages.items()}


def test_every_stage_command_answers_help_without_doing_its_work(tmp_path, monkeypatch, capsys):
    """`python -m stages.<name> --help` prints the stage's usage and exits: it neither generates data
    nor builds a model (download and backbone once ignored the flag and did their work)."""
    import importlib

    import pytest

    monkeypatch.chdir(tmp_path)
    commands = stage_commands()
    assert set(commands.values()) >= {"stages.download", "stages.backbone", "stages.train"}
    for name, module in commands.items():
        with pytest.raises(SystemExit) as exit_info:
            importlib.import_module(module).main(["--help"])
        assert exit_info.value.code == 0, name
        assert "usage:" in capsys.readouterr().out, name
    assert list(tmp_path.iterdir()) == []
