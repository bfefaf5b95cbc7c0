"""constraints.txt pins every dependency pyproject.toml names, within pyproject's ranges.

`make venv` installs with `-c constraints.txt`: a dependency added to pyproject.toml without a pin
would float on a fresh machine, and a pin outside pyproject's range would make the install fail.
"""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            out[canonicalize_name(name)] = Version(version)
    return out


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    return [Requirement(r) for r in names]


def test_every_dependency_but_torch_is_pinned_within_its_range():
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        if name == "torch":  # the Makefile installs it first; GPU nodes keep their CUDA build
            assert name not in pinned, "torch must not be pinned in constraints.txt"
            continue
        assert name in pinned, f"{req.name} is in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned[name]}, outside pyproject's {req.specifier}")


def test_the_makefile_installs_within_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile
    assert "-c $(CONSTRAINTS)" in makefile
