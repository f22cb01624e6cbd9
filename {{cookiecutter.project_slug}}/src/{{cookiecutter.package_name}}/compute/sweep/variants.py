"""Step 1, expand: `--set key=a,b,c` grids and sweep files into Variants, each validated as
params.yaml + its overrides; the sweep id.

Every combination of the grid, times each listed variant. An unknown key or a bad value names
the variant and the key.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...config import ConfigError, load_params, yaml_error

SWEEP_ID = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]")


class SweepError(ConfigError):
    """A bad grid, sweep file or option: exit code 2, nothing started."""


@dataclass
class Variant:
    name: str  # v1, v2, ...: stable for the same grid, so a rerun with the same --id finds its runs
    sets: list[str]  # key=value overrides, the varying ones and the fixed ones
    varying: dict[str, str] = field(default_factory=dict)  # only the keys that differ between variants
    params: Any = None
    estimate: dict | None = None  # the plan's cheapest offer for this variant

    @property
    def set_line(self) -> str:
        return " ".join(f"--set {shlex.quote(s)}" for s in self.sets)


def split_values(raw: str) -> list[str]:
    """`8,16,32` -> ["8", "16", "32"]; commas inside [...], {...} or quotes stay (YAML lists)."""
    values, depth, quote, current = [], 0, "", ""
    for char in raw:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    values.append(current)
    return values


def yaml_value(value: Any) -> str:
    """A value from a sweep file, written so that `--set` parses it back to the same value."""
    if isinstance(value, str):
        return value if yaml.safe_load(value) == value else json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def grid_from_sets(sets: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for assignment in sets:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--set {assignment!r}: expected key=value or key=a,b,c")
        values = split_values(raw)
        if any(not v.strip() for v in values):
            raise SweepError(f"--set {assignment!r}: an empty value in the list")
        grid[key.strip()] = values
    return grid


def read_sweep_file(path: str | Path) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """(grid, variants) from a sweep file:

        grid:                          # every combination
          lora.r: [8, 16, 32]
          train.learning_rate: [1.0e-4, 2.0e-4]
        variants:                      # each of these (times the grid, when both are given)
          - {lora.r: 64, lora.alpha: 128}
        set: {train.max_steps: 500}    # the same for every variant
    """
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{path}: sweep file not found") from None
    except yaml.YAMLError as err:
        raise SweepError(yaml_error(path, err)) from None
    if not isinstance(tree, dict) or not tree:
        raise SweepError(f"{path}: expected a mapping with grid:, variants: and/or set:")
    unknown = sorted(set(tree) - {"grid", "variants", "set"})
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r} (a sweep file has grid:, variants: and set:)")
    fixed = tree.get("set") or {}
    if not isinstance(fixed, dict):
        _bad(path, "set")
    grid = {str(key): [yaml_value(value)] for key, value in fixed.items()}
    raw_grid = tree.get("grid") or {}
    if not isinstance(raw_grid, dict):
        _bad(path, "grid")
    for key, values in raw_grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key}: expected a non-empty list of values, e.g. [8, 16, 32]")
        grid[str(key)] = [yaml_value(v) for v in values]
    raw_variants = tree.get("variants") or []
    if not isinstance(raw_variants, list) or not all(isinstance(v, dict) and v for v in raw_variants):
        _bad(path, "variants")
    variants = [{str(k): yaml_value(v) for k, v in entry.items()} for entry in raw_variants]
    return grid, variants


def _bad(path: Path, key: str):
    shapes = {"set": "a mapping of key: value", "grid": "a mapping of key: [values]", "variants": "a list of mappings"}
    raise SweepError(f"{path}: {key}: expected {shapes[key]}")


def expand(sets: list[str], sweep_file: str | Path | None = None) -> list[Variant]:
    """The variants, in a stable order: the file's grid and list, then the command line's grid."""
    grid, listed = read_sweep_file(sweep_file) if sweep_file else ({}, [])
    grid.update(grid_from_sets(sets))  # the command line wins over the file for the same key
    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
    overrides = [{**combo, **entry} for entry in (listed or [{}]) for combo in combos]
    if len(overrides) < 2:
        raise SweepError("a sweep needs at least two variants: give a key several values (--set lora.r=8,16) "
                         "or a sweep file with grid: / variants:")
    seen: dict[tuple, str] = {}
    variants = []
    for number, values in enumerate(overrides, start=1):
        name = f"v{number}"
        frozen = tuple(sorted(values.items()))
        if frozen in seen:
            raise SweepError(f"variants {seen[frozen]} and {name} are the same ({' '.join(f'{k}={v}' for k, v in frozen)})")
        seen[frozen] = name
        variants.append(Variant(name, [f"{k}={v}" for k, v in values.items()]))
    all_keys = dict.fromkeys(k for values in overrides for k in values)
    for variant, values in zip(variants, overrides, strict=True):
        variant.varying = {k: values.get(k, "") for k in all_keys if len({o.get(k) for o in overrides}) > 1}
    return variants


def validate(variants: list[Variant], params_path: str | Path, base_sets: list[str] = ()) -> None:
    """Each variant's params, loaded and checked: the first problem names the variant."""
    for variant in variants:
        for assignment in variant.sets:
            if re.search(r"\s", assignment):
                raise SweepError(f"{variant.name}: {assignment!r}: a value passed to a task cannot contain whitespace")
        try:
            variant.params = load_params(params_path, [*base_sets, *variant.sets])
        except ConfigError as err:
            raise SweepError(f"variant {variant.name} ({' '.join(variant.sets)}): {err}") from None


def new_sweep_id() -> str:
    """`sw-<month><day>-<hour><minute>-<4 hex>` (UTC): short, sortable, valid in job names."""
    return f"sw-{time.strftime('%m%d-%H%M', time.gmtime())}-{secrets.token_hex(2)}"


def check_sweep_id(sweep_id: str) -> str:
    if not SWEEP_ID.fullmatch(sweep_id):
        raise SweepError(f"--sweep/--id {sweep_id!r}: lowercase letters, digits and '-', starting with a letter, "
                         "at most 32 characters")
    return sweep_id
