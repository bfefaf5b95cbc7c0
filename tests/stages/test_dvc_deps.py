"""dvc.yaml: every project module a stage imports is one of its deps, so that changing it reruns the
stage (a missing dep leaves stale outputs that `dvc repro` calls up to date); the same import walk
(`trainer.provenance`) gives the code digest that checkpoints and the embedding cache are keyed by."""

import yaml

from trainer.provenance import REPO, imported_files, source_digest, source_files


def test_every_imported_project_module_is_a_stage_dep():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, module in stage_commands().items():
        stage = stages[name]
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
        listed = {(REPO / d).resolve() for d in deps}
        needed = set(source_files(module))
        lacking = sorted(str(p.relative_to(REPO)) for p in needed
                         if p.resolve() not in listed and not any(parent in listed for parent in p.resolve().parents))
        if lacking:
            missing[name] = lacking
    assert not missing, f"dvc.yaml deps lack imported project modules: {missing}"


def test_every_code_dep_of_a_stage_is_code_it_runs():
    """The other way round: a module or package folder listed as a dep is run by the stage (all of a
    folder's modules), so that editing unrelated code does not rerun it (a module moved elsewhere
    would otherwise stay a dep)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    extra = {}
    for name, module in stage_commands().items():
        needed = set(source_files(module))
        for dep in stages[name].get("deps", []):
            dep = dep if isinstance(dep, str) else next(iter(dep))
            path = REPO / dep
            if dep.endswith(".py"):
                code = {path}
            elif path.is_dir() and dep.split("/")[0] in ("pipelines", "stages", "trainer"):
                code = {p for p in path.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
            else:
                continue
            if code - needed:
                extra.setdefault(name, []).append(dep)
    assert not extra, f"dvc.yaml deps a stage does not run: {extra}"


def test_the_import_walk_sees_lazy_and_package_imports(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("from trainer.model import image_processing\n\ndef f():\n    import pipelines.images\n")
    assert imported_files(code) == {REPO / "trainer/model/image_processing.py", REPO / "pipelines/images.py"}


def test_the_import_walk_follows_a_package_that_hands_on_its_modules(tmp_path):
    """`from pipelines.sources import synthetic` runs the package's modules through its __init__: a
    walk that skipped every __init__ missed them (the stage would not rerun when they change)."""
    package = tmp_path / "pipelines" / "gen"
    package.mkdir(parents=True)
    (tmp_path / "pipelines" / "__init__.py").write_text('"""Empty."""\n')
    (package / "__init__.py").write_text('"""A package."""\nfrom pipelines.gen.core import generate\n')
    (package / "core.py").write_text("def generate():\n    return 1\n")
    (tmp_path / "pipelines" / "stage.py").write_text("from pipelines import gen\n")
    names = [p.relative_to(tmp_path).as_posix() for p in source_files("pipelines.stage", tmp_path)]
    assert names == ["pipelines/gen/__init__.py", "pipelines/gen/core.py", "pipelines/stage.py"]


def test_source_digest_follows_the_imported_code_only(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "loop.py").write_text("import os\n\ndef f():\n    from trainer import losses\n")
    (tmp_path / "trainer" / "losses.py").write_text("T = 0.02\n")
    (tmp_path / "trainer" / "report.py").write_text("X = 1\n")
    assert [p.name for p in source_files("trainer.loop", tmp_path)] == ["loop.py", "losses.py"]
    before = source_digest("trainer.loop", tmp_path)
    (tmp_path / "trainer" / "report.py").write_text("X = 2\n")  # not imported: same code
    assert source_digest("trainer.loop", tmp_path) == before
    (tmp_path / "trainer" / "losses.py").write_text('"""Losses."""\n# the temperature\nT = 0.02  # tau\n')
    assert source_digest("trainer.loop", tmp_path) == before  # comments, docstrings: the same code
    (tmp_path / "trainer" / "losses.py").write_text("T = 0.2\n")  # imported lazily: other code
    assert source_digest("trainer.loop", tmp_path) != before


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


def test_train_stays_up_to_date_after_a_run_of_other_params(tmp_path):
    """The train stage's outputs as dvc.yaml declares them, in a scratch repo with the project's
    .gitignore, written by a stand-in command that keeps only its own params' checkpoints (as
    `trainer.train.recipe` does): after a run of other params and a checkout of the first, `dvc status` finds
    train up to date. A git-ignored uncached output (models/checkpoints) cannot be restored by git or
    dvc, so it marked train changed and the next `dvc repro` retrained from scratch."""
    import os
    import shutil
    import subprocess
    import sys

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    fake = ("import pathlib, shutil, yaml; lr = yaml.safe_load(open('params.yaml'))['train']['lr']; "
            "shutil.rmtree('models/checkpoints', ignore_errors=True); "
            "[pathlib.Path(p).mkdir(parents=True, exist_ok=True) for p in "
            "('models/embedder', f'models/checkpoints/lr{lr}', 'metrics/train/plots/metrics')]; "
            "pathlib.Path('models/embedder/w').write_text(str(lr)); "
            "pathlib.Path(f'models/checkpoints/lr{lr}/state').write_text(str(lr)); "
            "pathlib.Path('metrics/train/metrics.json').write_text('{\"loss\": %s}' % lr); "
            "pathlib.Path('metrics/train/plots/metrics/loss.tsv').write_text('step\\tloss\\n0\\t%s\\n' % lr)")
    scratch = {"cmd": f'{sys.executable} -c "{fake}"', "params": ["train"],
               **{k: stage[k] for k in ("outs", "metrics", "plots") if k in stage}}
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": scratch}}))
    (repo / "params.yaml").write_text("train:\n  lr: 1\n")
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    dvc = [sys.executable, "-m", "dvc"]

    def run(*cmd):
        return subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    run(*dvc, "repro")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "lr 1")
    run(*dvc, "exp", "run", "-S", "train.lr=2")
    run("git", "checkout", "--", ".")
    run(*dvc, "checkout")
    assert (repo / "models/embedder/w").read_text() == "1"
    assert "up to date" in run(*dvc, "status", "train")


def test_every_stage_refuses_an_unknown_key_in_its_params_sections(tmp_path, monkeypatch):
    """A typo in `dvc exp run -S eval.dataset=[Syn-CIRR]` (for `datasets`) ran with the default (all
    datasets) unnoticed; each stage now names the unknown key before it does any work."""
    import importlib

    import pytest

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, module in stage_commands().items():
        for section in (s for s in stages[name]["params"] if "." not in s):  # not a key of another's
            typo = {**params, section: {**params[section], "no_such_key": 1}}
            path = tmp_path / f"{name}-{section}.yaml"
            path.write_text(yaml.safe_dump(typo))
            with pytest.raises(ValueError, match="no_such_key"):
                importlib.import_module(module).main(["--params", str(path)])
            path.unlink()
    assert list(tmp_path.iterdir()) == []
