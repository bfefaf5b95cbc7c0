"""Recipe profiles: named, versioned sets of params values (`profiles/<name>.yaml`).

    python -m pipelines.profiles list
    python -m pipelines.profiles apply vlm2vec-v2 --backbone Qwen/Qwen2-VL-2B-Instruct
    python -m pipelines.profiles diff                # params.yaml against its profile (recipe.profile)

A profile holds the values of one published recipe for the keys that make it: input rendering
(position scheme, stray-token rule, resize rule, pixel caps), LoRA (rank, alpha, dropout, DoRA,
targets), optimisation (learning rate, warm-up, steps, global batch, GradCache chunk) and sampling
(rows per dataset, same-source sub-batches), with the backbone it was published with and `notes` on
what params cannot express (peft's LoRA init, first-N sampling, ...). `default` is this project's own.

`apply` rewrites those values in params.yaml in place, line by line, so its comments stay and
`dvc params diff` shows every value it changed; it sets `recipe.profile`, and refuses (writing
nothing) when the result would not pass the params check. `differences` lists the settings of a
params document that differ from its profile: the evaluate stage writes them into its report.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipelines import files
from pipelines.params import PROFILES_DIR, params_path, parse


@dataclass(frozen=True)
class Profile:
    """One recipe: `values` maps "section.key" to its value."""

    name: str
    version: int
    source: str
    backbone: str
    values: dict[str, Any]
    notes: tuple[str, ...]

    def settings(self, backbone: str | None = None) -> dict[str, Any]:
        """Every value the profile sets, with `backbone.name` (its own backbone unless one is given)."""
        return {**self.values, "backbone.name": backbone or self.backbone, "recipe.profile": self.name}


def names(root: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in Path(root).glob("*.yaml"))


def load_profile(name: str, root: Path = PROFILES_DIR) -> Profile:
    path = Path(root) / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no profile {name!r}; known: {', '.join(names(root))}")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    values = {f"{section}.{k}": v for section, keys in doc["values"].items() for k, v in keys.items()}
    return Profile(doc["name"], int(doc["version"]), doc["source"], doc["backbone"], values,
                   tuple(doc.get("notes") or ()))


# --- editing params.yaml in place --------------------------------------------------------------
def yaml_value(value: Any) -> str:
    """`value` as one line of flow YAML, as params.yaml writes it (0.00005, not 5e-05)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return f"{value:.12f}".rstrip("0") if "e" in text else text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).splitlines()[0].removesuffix(" ...")


_LINE = re.compile(r"^(?P<head>  (?P<key>\w+):[ \t]*)(?P<value>[^#\n]*?)(?P<gap>[ \t]*)(?P<comment>#.*)?$")


COMMENT_COLUMN = 28  # where params.yaml's comments start, unless a line's value reaches past it


def set_values(text: str, values: Mapping[str, Any]) -> str:
    """`text` (params.yaml) with each "section.key" of `values` set on its own line, its comment kept
    at `COMMENT_COLUMN` (two spaces after a longer value). KeyError for a key the text does not hold."""
    lines = text.split("\n")
    section, where = None, {}
    for i, line in enumerate(lines):
        if line and not line[0].isspace() and not line.startswith("#"):
            section = line.split(":", 1)[0]
        elif section and (m := _LINE.match(line)):
            where[f"{section}.{m['key']}"] = (i, m)
    for name, value in values.items():
        if name not in where:
            raise KeyError(f"{name} is not in the params file")
        i, m = where[name]
        new = yaml_value(value)
        if m["comment"]:
            content = f"{m['head']}{new}"
            lines[i] = content.ljust(max(COMMENT_COLUMN, len(content) + 2)) + m["comment"]
        else:
            lines[i] = f"{m['head']}{new}"
    return "\n".join(lines)


def apply(profile: Profile, path: Path, backbone: str | None = None) -> dict[str, tuple[Any, Any]]:
    """Set `profile`'s values (and `backbone`) in the params file at `path`; {"section.key": (old, new)}
    for each value changed. Nothing is written when the result fails the params check (ParamsError)."""
    text = Path(path).read_text(encoding="utf-8")
    before = yaml.safe_load(text)
    wanted = profile.settings(backbone)
    edited = set_values(text, wanted)
    after = yaml.safe_load(edited)
    parse(after, str(path))  # refuse to write a params file no stage would accept
    changed = {}
    for name in wanted:
        section, key = name.split(".", 1)
        if before[section][key] != after[section][key]:
            changed[name] = (before[section][key], after[section][key])
    if changed:
        files.write_text(path, edited)
    return changed


def differences(document: Mapping[str, Any], root: Path = PROFILES_DIR) -> dict[str, Any]:
    """The profile that `document` (a params.yaml, unresolved) names in recipe.profile and its settings
    that differ: {"profile": name, "version", "source", "notes", "differs": [[key, value, profile's]]}.
    The backbone counts as a difference too."""
    profile = load_profile(document["recipe"]["profile"], root)
    differs = []
    for name, want in sorted(profile.settings().items()):
        section, key = name.split(".", 1)
        have = document[section][key]
        if _normal(have) != _normal(want):
            differs.append([name, have, want])
    return {"profile": profile.name, "version": profile.version, "source": profile.source,
            "notes": list(profile.notes), "differs": differs}


def differences_in(path: Path) -> dict[str, Any]:
    """`differences` of the params file at `path`."""
    return differences(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


def _normal(value: Any) -> Any:
    """Lists and tuples alike; 5e-05 written as a string (YAML 1.1) and as a float alike."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r"[-+]?[0-9.]+e[-+]?[0-9]+", value) else value
        except ValueError:
            return value
    return value


# --- CLI -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.profiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=None, help="the params file (default params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the profiles and what each is")
    use = sub.add_parser("apply", help="set a profile's values in the params file")
    use.add_argument("profile", choices=names())
    use.add_argument("--backbone", help="backbone.name instead of the profile's own")
    sub.add_parser("diff", help="the settings that differ from the params file's profile")
    args = parser.parse_args(argv)
    path = params_path(args.params)
    if args.command == "list":
        for name in names():
            p = load_profile(name)
            print(f"{name} (version {p.version}): {p.source}; backbone {p.backbone}")
        return 0
    if args.command == "apply":
        changed = apply(load_profile(args.profile), path, args.backbone)
        for name, (old, new) in changed.items():
            print(f"{name}: {yaml_value(old)} -> {yaml_value(new)}")
        print(f"{path}: profile {args.profile}, {len(changed)} value(s) changed (dvc params diff lists them)")
        return 0
    report = differences_in(path)
    print(f"profile {report['profile']} (version {report['version']}): {report['source']}")
    for name, have, want in report["differs"]:
        print(f"  {name}: {yaml_value(have)} (profile: {yaml_value(want)})")
    print(f"{len(report['differs'])} setting(s) differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
