"""Load YAML recipes with inheritance and `section.key=value` overrides into a typed `Recipe`.

A recipe may name a `base:` recipe (path relative to itself); bases are merged first, so the file
named on the command line wins, and command-line overrides win over every file. Each layer is merged
separately onto the typed schema, so an error names the file (or override) that introduced it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mfvideo.config.schema import Recipe, range_problems

BASE_KEY = "base"


class RecipeError(Exception):
    """A recipe problem found before any work starts; the message names the key or file at fault."""


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"key '{key}': {reason}" if key else reason


def _read_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """[(file, mapping)] from the root base down to `path`."""
    path = path.resolve()
    if path in chain:
        raise RecipeError(f"{path}: base recipes form a cycle: {' -> '.join(map(str, chain + (path,)))}")
    if not path.is_file():
        named_by = f" (named as base by {chain[-1]})" if chain else ""
        raise RecipeError(f"recipe file not found: {path}{named_by}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(content, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(content).__name__}")
    base = content.pop(BASE_KEY, None)
    layers = _read_layers(path.parent / base, chain + (path,)) if base else []
    return layers + [(path, content)]


def _parse_override(item: str) -> dict:
    if "=" not in item:
        raise RecipeError(f"command-line override '{item}' is not of the form section.key=value")
    dotted, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:  # also a `!!python/...` tag, which safe_load rightly refuses to construct
        reason = str(err).splitlines()[0]
        raise RecipeError(f"command-line override '{item}': its value is not valid YAML ({reason})") from None
    node: dict = {}
    cursor = node
    *parents, leaf = dotted.strip().split(".")
    for part in parents:
        cursor = cursor.setdefault(part, {})
    cursor[leaf] = value
    return node


def _merge(cfg: DictConfig, layer: dict, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as err:
        raise RecipeError(f"{origin}: {_describe(err)}") from None


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """The typed recipe, or RecipeError naming the key and the file (or override) at fault: an unknown key, a value
    of the wrong type or outside its range. The rules of its values together, and of the allowed sets, are its
    task's (`mfvideo.tasks.rules`)."""
    path = Path(path)
    return _typed(_read_layers(path), overrides, str(path))


def recipe_from_text(text: str, origin: str, overrides: Sequence[str] = ()) -> Recipe:
    """The typed recipe of a resolved recipe's YAML (as `recipe_to_yaml` writes it, e.g. the one a checkpoint
    carries), checked as `load_recipe` checks a file; `origin` names it in errors."""
    try:
        content = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{origin}: not valid YAML: {err}") from None
    if not isinstance(content, dict):
        raise RecipeError(f"{origin}: a recipe must be a mapping of sections, got {type(content).__name__}")
    content.pop(BASE_KEY, None)
    return _typed([(origin, content)], overrides, origin)


def _typed(layers: Sequence[tuple[object, dict]], overrides: Sequence[str], origin: str) -> Recipe:
    cfg = OmegaConf.structured(Recipe)
    for source, content in layers:
        cfg = _merge(cfg, content, str(source))
    for item in overrides:
        cfg = _merge(cfg, _parse_override(item), f"command-line override '{item}'")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise RecipeError(f"{origin}: required key(s) without a value: {', '.join(missing)}")
    recipe = OmegaConf.to_object(cfg)
    assert isinstance(recipe, Recipe)
    problems = range_problems(recipe)
    if problems:
        raise RecipeError("\n".join(f"{origin}: {problem}" for problem in problems))
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def save_recipe(recipe: Recipe, directory: str | Path, name: str = "recipe.yaml") -> Path:
    """Write the resolved recipe beside an output so the run can be reproduced from it alone."""
    out = Path(directory) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(recipe_to_yaml(recipe))
    return out


def load_recipe_or_exit(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """For entry points: print the error and exit with code 2 before any work is done."""
    try:
        return load_recipe(path, list(overrides))
    except RecipeError as err:
        print(f"recipe error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
