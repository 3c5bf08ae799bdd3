"""Recipe files: a bundled profile found by name, a YAML file read and validated into a
:class:`~edgedistill.config.Recipe` (paths resolved relative to the recipe's folder, ``--set``
overrides applied and type-checked), and the resolved recipe saved as a run's config.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from edgedistill.config import Recipe, credentials_in
from edgedistill.errors import ConfigError
from edgedistill.schema import apply_overrides, bundled, parse_override, read_yaml, validate


def _resolve_paths(data: dict, base: Path) -> dict:
    """Make recipe paths absolute, relative to the recipe file's folder."""
    def resolve(value: str) -> str:
        p = Path(value).expanduser()
        if p.is_absolute():
            return str(p)
        candidate = (base / p).resolve()
        return str(candidate)

    data_sec = data.get("data")
    if isinstance(data_sec, dict) and isinstance(data_sec.get("prompts"), str):
        data_sec["prompts"] = resolve(data_sec["prompts"])
    for key in ("eval_sets", "train_sets"):
        if isinstance(data_sec, dict) and isinstance(data_sec.get(key), dict):
            data_sec[key] = {k: resolve(v) if isinstance(v, str) else v for k, v in data_sec[key].items()}
    # model references that look like relative paths and exist next to the recipe
    for section in ("teacher", "student"):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get("model"), str):
            m = sec["model"]
            if m.startswith((".", "~")) or (not Path(m).is_absolute() and (base / m).exists()):
                sec["model"] = resolve(m)
    exp = data.get("export")
    if isinstance(exp, dict) and isinstance(exp.get("llama_cpp_dir"), str):
        exp["llama_cpp_dir"] = resolve(exp["llama_cpp_dir"])
    return data


def find_recipe(name_or_path: str | None) -> Path:
    """A recipe path, or the name of a bundled profile (``demo``)."""
    if name_or_path is None:
        return bundled("profiles") / "demo.yaml"
    p = Path(name_or_path)
    if p.exists():
        return p
    named = bundled("profiles") / f"{name_or_path}.yaml"
    if not p.suffix and named.exists():
        return named
    known = sorted(x.stem for x in bundled("profiles").glob("*.yaml"))
    raise ConfigError(
        f"Recipe {name_or_path} does not exist.",
        hint=f"Bundled profiles: {', '.join(known)} (pass a name or a path).",
    )


def _from_cwd(item: str) -> str:
    """A path given with --set is read from the current folder (a recipe's own paths from the
    recipe's folder): made absolute here, so the run's saved config.yaml reads the same file."""
    key, _ = parse_override(item)
    alone = apply_overrides(Recipe, {}, [item])
    resolved = _resolve_paths(json.loads(json.dumps(alone)), Path.cwd())
    for part in key:
        alone, resolved = alone[part], resolved[part]
    return item if resolved == alone else f"{'.'.join(key)}={json.dumps(resolved)}"


def load_recipe(path: Path, overrides: list[str] = ()) -> Recipe:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a YAML mapping of recipe keys.")
    raw = _resolve_paths(raw, path.resolve().parent)
    raw = apply_overrides(Recipe, raw, [_from_cwd(o) for o in overrides])
    shown = [o.partition("=")[0] + "=<credential hidden>" if credentials_in(o.partition("=")[2]) else o
             for o in overrides]
    source = str(path) + (f" with --set {' '.join(shown)}" if overrides else "")
    return validate(Recipe, raw, source)


def load_recipe_dict(raw: dict, overrides: list[str] = (), source: str = "recipe") -> Recipe:
    raw = apply_overrides(Recipe, raw, list(overrides))
    return validate(Recipe, raw, source)


def save_recipe(recipe: Recipe, path: Path) -> None:
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # this process's own
    tmp.write_text(text)
    tmp.replace(path)
