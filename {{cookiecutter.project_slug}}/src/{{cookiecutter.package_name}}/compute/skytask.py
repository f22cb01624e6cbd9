"""SkyPilot task files (sky/*.yaml): our checks, SkyPilot's own parser, and finding SkyPilot.

SkyPilot's client accepts any `job_recovery` strategy name and any key inside `job_recovery`
(plugins on the API server may add some), so a typo such as `EAGER_NEXT_REGON` or
`max_restart_on_errors` is only noticed once the job has been submitted, or never. `problems`
catches those, plus what keeps our tasks recoverable: exit code 75 (the trainer stopped
after a checkpoint) is in `recover_on_exit_codes`, CHECKPOINT_ROOT is a MOUNT_CACHED bucket,
USE_SPOT matches `resources.use_spot`, and no secret value is committed.

SkyPilot pins `click<8.2` and so lives in an environment of its own. `find_sky_python` and
`find_sky_cli` locate it; `skypilot_check` runs `sky.Task.from_yaml` there, in one process.

    python -m {{ cookiecutter.package_name }}.compute.skytask sky/*.yaml    # both checks; exit 2 on problems
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, yaml_error

# SkyPilot 0.14's recovery strategies (JOBS_RECOVERY_STRATEGY_REGISTRY, sky/jobs/recovery_strategy.py).
RECOVERY_STRATEGIES = ("EAGER_NEXT_REGION", "FAILOVER")
# The keys SkyPilot's job_recovery schema declares (sky/utils/schemas.py).
RECOVERY_KEYS = ("strategy", "max_restarts_on_errors", "recover_on_exit_codes")
EXIT_PREEMPTED = 75  # the trainer's "stopped by SIGTERM after saving a checkpoint" (cli.py)
CANDIDATE_LISTS = ("any_of", "ordered")  # resources.<list>[i] may carry its own job_recovery
SKY_PIN = "skypilot==0.14.1"  # what `make setup-sky` installs; the version these checks were written against


class TaskError(ConfigError):
    """A task file breaks a rule. Subclass of ConfigError: the CLI exits with code 2."""


class SkyNotFound(ConfigError):
    """No SkyPilot installation was found."""


# --------------------------------------------------------------------------- reading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A duplicated key is an error (SkyPilot rejects it too), not a silent override."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _lines(node: yaml.Node | None, prefix: tuple = ()) -> dict[tuple, int]:
    """1-based line of every key and list item, by its path: ("resources", "any_of", 0)."""
    found: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            found[path] = key_node.start_mark.line + 1
            found.update(_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, index)
            found[path] = item.start_mark.line + 1
            found.update(_lines(item, path))
    return found


def load(path: str | Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """The task as a dict, plus the line of every key for error messages."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"{path}: task file not found") from None
    try:
        config = yaml.load(text, Loader=_UniqueKeyLoader)
        lines = _lines(yaml.compose(text))
    except yaml.YAMLError as err:
        raise TaskError(yaml_error(path, err)) from None
    if not isinstance(config, dict):
        raise TaskError(f"{path}: a task file is a mapping (name:, resources:, run:, ...)")
    return config, lines


# --------------------------------------------------------------------------- our rules


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_recovery(spec, path: tuple, ours: bool) -> list[tuple[tuple, str]]:
    """Problems of one job_recovery value, as (path of the offending key, message)."""
    known = ", ".join(RECOVERY_STRATEGIES)
    if isinstance(spec, str):
        spec = {"strategy": spec}
        strategy_path = path
    elif isinstance(spec, dict):
        strategy_path = (*path, "strategy")
    else:
        return [(path, f"must be a strategy name or a mapping of {', '.join(RECOVERY_KEYS)} (got {spec!r})")]
    found = []
    for key in spec:
        if key not in RECOVERY_KEYS:
            found.append(((*path, key), f"unknown key{_suggest(key, RECOVERY_KEYS)}; SkyPilot knows: {', '.join(RECOVERY_KEYS)}"))
    strategy = spec.get("strategy")
    if strategy is None:
        if ours:
            found.append((path, f"set a strategy ({known}): our tasks do not rely on SkyPilot's default"))
    elif not isinstance(strategy, str) or strategy not in RECOVERY_STRATEGIES:
        found.append(
            (strategy_path, f"unknown strategy {strategy!r}{_suggest(strategy, RECOVERY_STRATEGIES)}; SkyPilot knows: {known}")
        )
    if "max_restarts_on_errors" in spec:
        restarts = spec["max_restarts_on_errors"]
        if not _is_int(restarts) or restarts < 0:
            found.append(((*path, "max_restarts_on_errors"), f"must be a whole number >= 0 (got {restarts!r})"))
    codes = spec.get("recover_on_exit_codes")
    codes_path = (*path, "recover_on_exit_codes")
    if codes is not None:
        listed = codes if isinstance(codes, list) else [codes]
        bad = [code for code in listed if not _is_int(code) or not 0 <= code <= 255]
        if bad:
            found.append((codes_path, f"exit codes are whole numbers 0-255 (got {', '.join(repr(c) for c in bad)})"))
        elif len(set(listed)) != len(listed):
            found.append((codes_path, "lists an exit code twice"))
    if ours and (codes is None or EXIT_PREEMPTED not in (codes if isinstance(codes, list) else [codes])):
        found.append(
            (
                codes_path if codes is not None else path,
                f"must include {EXIT_PREEMPTED}: the trainer's exit code after SIGTERM, once its checkpoint is saved",
            )
        )
    return found


def problems(
    config: dict[str, Any], lines: dict[tuple, int] | None = None, path: str | Path = "task", ours: bool = True
) -> list[str]:
    """Everything wrong with a task, one message per problem, each naming file:line and key.

    `ours=False` checks only what any SkyPilot task must get right (job_recovery names, keys
    and types); `ours=True` adds the rules our training tasks depend on.
    """
    lines = lines or {}
    found: list[tuple[tuple, str]] = []
    resources = config.get("resources") or {}
    if not isinstance(resources, dict):
        found.append((("resources",), "must be a mapping"))
        resources = {}

    # job_recovery: at resources level and/or per candidate; SkyPilot needs one value for all.
    specs = []
    if "job_recovery" in resources:
        specs.append((("resources", "job_recovery"), resources["job_recovery"]))
    for list_key in CANDIDATE_LISTS:
        for index, candidate in enumerate(resources.get(list_key) or []):
            if isinstance(candidate, dict) and "job_recovery" in candidate:
                specs.append((("resources", list_key, index, "job_recovery"), candidate["job_recovery"]))
    for spec_path, spec in specs:
        found += _check_recovery(spec, spec_path, ours)
    if len({json.dumps(spec, sort_keys=True, default=str) for _, spec in specs}) > 1:
        found.append(
            (
                specs[1][0],
                "differs from another job_recovery: SkyPilot needs one for all candidates (set it once, under resources)",
            )
        )

    envs = config.get("envs") or {}
    for key, value in envs.items():
        if value is None:
            found.append((("envs", key), 'has no value; SkyPilot refuses that (write "" for empty)'))

    if ours:
        if not specs:
            found.append(
                (
                    ("resources",),
                    f"needs job_recovery (strategy {RECOVERY_STRATEGIES[0]}, recover_on_exit_codes [{EXIT_PREEMPTED}])",
                )
            )
        if not config.get("name"):
            found.append((("name",), "needs a name (the default job name)"))
        if not config.get("run"):
            found.append((("run",), "needs a run section"))

        # The run section writes checkpoints under CHECKPOINT_ROOT: it must be the bucket.
        root = envs.get("CHECKPOINT_ROOT")
        mounts = config.get("file_mounts") or {}
        mount = mounts.get(root) if isinstance(mounts, dict) and root else None
        if not root:
            found.append((("envs",), "needs CHECKPOINT_ROOT: the mount path of the checkpoint bucket"))
        elif not isinstance(mount, dict):
            found.append(
                (("envs", "CHECKPOINT_ROOT"), f"{root!r} is not a bucket under file_mounts: checkpoints would die with the VM")
            )
        elif str(mount.get("mode", "")).upper() != "MOUNT_CACHED":
            found.append(
                (
                    ("file_mounts", root, "mode") if "mode" in mount else ("file_mounts", root),
                    f"must be MOUNT_CACHED (got {mount.get('mode', 'MOUNT')!r}): checkpoints are written at local-disk speed and "
                    "uploaded in the background, and a finished job waits for the upload",
                )
            )

        # Nothing on the VM tells spot from on-demand: USE_SPOT carries it to the cost meter.
        spot = str(bool(resources.get("use_spot", False))).lower()
        if "USE_SPOT" not in envs:
            found.append((("envs",), f'needs USE_SPOT: "{spot}" (equal to resources.use_spot; priced by the trainer)'))
        elif str(envs["USE_SPOT"]).lower() != spot:
            found.append(
                (("envs", "USE_SPOT"), f"is {envs['USE_SPOT']!r} but resources.use_spot is {spot}: the run would be priced wrong")
            )

        secrets = config.get("secrets") or {}
        if isinstance(secrets, dict):
            for key, value in secrets.items():
                if value not in (None, ""):
                    found.append(
                        (("secrets", key), 'has a value in a committed file: write "" and pass it at launch (--secret NAME)')
                    )

    messages = []
    for key_path, message in found:
        line = next((lines[key_path[:n]] for n in range(len(key_path), 0, -1) if key_path[:n] in lines), None)
        where = f"{path}:{line}" if line else str(path)
        messages.append(f"{where}: {_dotted(key_path)}: {message}")
    return messages


def check_file(path: str | Path, ours: bool = True) -> dict[str, Any]:
    """Load and check one task file; TaskError lists every problem. Returns the task."""
    config, lines = load(path)
    found = problems(config, lines, path, ours)
    if found:
        raise TaskError("\n".join(found))
    return config


def with_ordered_candidates(config: dict[str, Any], accelerators: list[str]) -> dict[str, Any]:
    """A copy whose candidates are tried in the given GPU order (`resources.ordered`) instead
    of SkyPilot's cheapest-first (`accelerators` + `any_of`). SkyPilot minimises the hourly
    price; a planner that knows each GPU's speed may rank by the price of the whole run.

    Each GPU keeps its count from the task and is tried on every cloud of `any_of` (in that
    order) before the next GPU.
    """
    task = copy.deepcopy(config)
    resources = task.setdefault("resources", {})
    counts = resources.pop("accelerators", None) or {}
    if isinstance(counts, str):
        name, _, count = counts.partition(":")
        counts = {name: int(count or 1)}
    clouds = resources.pop("any_of", None) or [{}]
    unknown = [name for name in accelerators if name not in counts]
    if unknown:
        raise TaskError(f"resources.accelerators: {', '.join(unknown)} not among the task's GPUs ({', '.join(counts)})")
    resources["ordered"] = [dict(cloud, accelerators={name: counts[name]}) for name in accelerators for cloud in clouds]
    return task


# --------------------------------------------------------------------------- SkyPilot itself


def find_sky_python(project: str | Path = ".") -> Path:
    """The python of SkyPilot's environment: $SKY_PYTHON, <project>/.venv-sky/bin/python, or `sky`'s."""
    explicit = os.environ.get("SKY_PYTHON")
    if explicit:
        if not Path(explicit).is_file():
            raise SkyNotFound(f"SKY_PYTHON={explicit}: no such file (point it at the python of SkyPilot's environment)")
        return Path(explicit)
    local = Path(project) / ".venv-sky/bin/python"
    if local.is_file():
        return local
    on_path = shutil.which("sky")
    if on_path:  # e.g. `uv tool install skypilot`: the script's first line names its python
        with open(on_path, "rb") as script:
            first = script.readline().decode(errors="replace").strip()
        if first.startswith("#!") and Path(first[2:].strip()).is_file():
            return Path(first[2:].strip())
    raise SkyNotFound(
        "SkyPilot not found: run `make setup-sky` (creates .venv-sky with " + SKY_PIN + "), or set "
        "SKY_PYTHON to the python of an environment where SkyPilot is installed"
    )


def find_sky_cli(project: str | Path = ".") -> list[str]:
    """The `sky` command: next to $SKY_PYTHON, else `sky` on PATH, else .venv-sky/bin/sky."""
    explicit = os.environ.get("SKY_PYTHON")
    if explicit:
        beside = Path(explicit).parent / "sky"
        if beside.is_file():
            return [str(beside)]
        return [explicit, "-c", "import sys; from sky.cli import cli; sys.exit(cli())"]
    on_path = shutil.which("sky")
    if on_path:
        return [on_path]
    local = Path(project) / ".venv-sky/bin/sky"
    if local.is_file():
        return [str(local)]
    raise SkyNotFound(
        "SkyPilot not found: install it in its own environment (its click pin clashes with this project's): "
        "`make setup-sky` (creates .venv-sky), or `uv tool install 'skypilot[aws,gcp]'` to put `sky` on PATH"
    )


_PARSE_SCRIPT = r"""
import json, sys
request = json.load(sys.stdin)
import sky
results = {}
for path in request["paths"]:
    try:
        task = sky.Task.from_yaml(path)
        results[path] = {"ok": True, "name": task.name, "num_nodes": task.num_nodes,
                         "candidates": sorted(str(r) for r in task.resources)}
    except Exception as err:  # SkyPilot raises ValueError, jsonschema errors, AssertionError, ...
        results[path] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
with open(request["out"], "w") as f:
    json.dump(results, f)
"""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def skypilot_check(
    paths, sky_python: str | Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> dict[str, dict]:
    """`sky.Task.from_yaml` on every file, in SkyPilot's environment, in one process.

    Returns, per path, either {"ok": True, "name", "num_nodes", "candidates"} or {"ok": False, "error"}.
    Offline and without cloud credentials: parsing needs neither.
    """
    python = Path(sky_python) if sky_python else find_sky_python()
    paths = [str(Path(p).resolve()) for p in paths]
    with tempfile.TemporaryDirectory(prefix="skycheck-") as scratch:
        out = Path(scratch) / "results.json"
        result = subprocess.run(
            [str(python), "-c", _PARSE_SCRIPT],
            input=json.dumps({"paths": paths, "out": str(out)}),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1", **(env or {})},
        )
        if result.returncode != 0 or not out.is_file():
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise SkyNotFound(f"{python} could not run SkyPilot: {detail[-1] if detail else 'exit ' + str(result.returncode)}")
        results = json.loads(out.read_text())
    for entry in results.values():
        if "error" in entry:
            entry["error"] = _ANSI.sub("", entry["error"]).strip()
    return results


def verify(paths, sky_python: str | Path | None = None, ours: bool = True, env: dict[str, str] | None = None) -> list[str]:
    """Our rules and SkyPilot's parser on every file; [] when all are fine.

    For the template's tests too: bake, then `verify(project.glob("sky/*.yaml"))`.
    """
    paths = [Path(p) for p in paths]
    found = []
    for path in paths:
        try:
            check_file(path, ours)
        except TaskError as err:
            found += str(err).splitlines()
    for path, entry in skypilot_check(paths, sky_python, env).items():
        if not entry["ok"]:
            found.append(f"{path}: SkyPilot rejects it: {entry['error']}")
    return found


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m {{ cookiecutter.package_name }}.compute.skytask", description=__doc__.splitlines()[0]
    )
    parser.add_argument("files", nargs="+", help="task YAML files")
    parser.add_argument("--no-skypilot", action="store_true", help="only our rules; do not run SkyPilot's parser")
    parser.add_argument("--any-task", action="store_true", help="only the rules every SkyPilot task must follow")
    args = parser.parse_args(argv)
    try:
        if args.no_skypilot:
            found = []
            for path in args.files:
                try:
                    check_file(path, ours=not args.any_task)
                except TaskError as err:
                    found += str(err).splitlines()
        else:
            found = verify(args.files, ours=not args.any_task)
    except SkyNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for message in found:
        print(f"error: {message}", file=sys.stderr)
    if not found:
        print(f"ok: {len(args.files)} task file(s)" + ("" if args.no_skypilot else ", also accepted by SkyPilot"))
    return 2 if found else 0


if __name__ == "__main__":
    sys.exit(main())
