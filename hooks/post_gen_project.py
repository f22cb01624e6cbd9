"""Finish the generated project: prune unused files, write the sample data, set up git + DVC.

Runs inside the new project folder. Every external command gets its arguments as a list
(never through a shell); a failing step prints one line saying what to fix and exits
non-zero, and cookiecutter then removes the half-made project.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ANSWERS = json.loads(r"""
{{ cookiecutter | tojson }}
""")

DATASET = "data/raw/support.jsonl"
PRIVATE_KEYS = {"_output_dir", "_repo_dir", "_checkout", "_commit"}  # machine-specific, not worth saving


class StepFailed(Exception):
    pass


# Only SkyPilot bakes launch cloud jobs: a self-hosted GPU runner trains with `make train`.
SKYPILOT_ONLY = [
    "sky",
    "docs/launch.md",
    "tests/test_sky.py",
    "tests/test_launch.py",
    "tests/test_sweep.py",
    "scripts/ci/launch_step.py",
    "scripts/ci/cloud_credentials.py",
]


def prune():
    """Remove what the chosen options do not use."""
    if ANSWERS["gpu_runner"] == "self-hosted":
        for path in map(Path, SKYPILOT_ONLY):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def save_answers():
    """`.cookiecutter.json` in cookiecutter's replay format: re-bake with --replay-file."""
    answers = {k: v for k, v in ANSWERS.items() if k not in PRIVATE_KEYS and k != "__prompts__"}
    Path(".cookiecutter.json").write_text(json.dumps({"cookiecutter": answers}, indent=2, ensure_ascii=False) + "\n")


def is_this_template(path: Path) -> bool:
    """Whether `path` is a folder holding the template that rendered this project."""
    try:
        keys = json.loads((path / "cookiecutter.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted = {k for k in ANSWERS if not k.startswith("_")}
    return isinstance(keys, dict) and wanted <= set(keys) and (path / "hooks" / "post_gen_project.py").is_file()


def template_dir():
    """The template's folder. cookiecutter passes it as given (`cookiecutter .` gives "."),
    relative to where cookiecutter was started, while this hook runs in the new project: try
    the places that can be, and keep the one that holds this template."""
    given = Path(ANSWERS.get("_repo_dir") or "")
    if given.is_absolute():
        return given if is_this_template(given) else None
    starts = [ANSWERS.get("_output_dir")]  # where cookiecutter was started, unless -o was given
    proc = Path(f"/proc/{os.getppid()}/cwd")  # Linux: cookiecutter's own working directory
    if proc.exists():
        starts.append(os.readlink(proc))
    starts.append(os.environ.get("PWD"))
    for start in filter(None, starts):
        if is_this_template(Path(start) / given):
            return (Path(start) / given).resolve()
    return None


def template_source():
    """(template, commit) for `cruft update`: where the template can be cloned from and the
    commit this project was rendered from; None when that cannot be known (not a git checkout,
    or no git)."""
    repo_dir, template = template_dir(), ANSWERS.get("_template", "")
    git = shutil.which("git")
    if not repo_dir or not git:
        return None
    head = subprocess.run([git, "-C", repo_dir, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    from cookiecutter.config import BUILTIN_ABBREVIATIONS
    from cookiecutter.repository import expand_abbreviations, is_repo_url, is_zip_file

    expanded = expand_abbreviations(template, BUILTIN_ABBREVIATIONS)  # gh:owner/name -> a clonable URL
    if is_zip_file(expanded):
        return None
    # A URL is cloned again by cruft; a local template is known by its absolute path.
    template = expanded if is_repo_url(expanded) else str(repo_dir)
    dirty = subprocess.run([git, "-C", repo_dir, "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    if dirty:
        print(f"note: the template at {repo_dir} has uncommitted changes; `cruft update` will treat this project "
              f"as rendered from its last commit")
    return template, head.stdout.strip()


def save_cruft_state():
    """`.cruft.json`, what `cruft update` reads: the template, its commit, the answers.

    cruft writes this file itself when it renders (it passes `_commit`); a plain `cookiecutter`
    run gets the same file here, so every project can take the template's later versions."""
    if "_commit" in ANSWERS:
        return
    source = template_source()
    if source is None:
        print("note: the template is not a git checkout, so `cruft update` cannot follow it; "
              "link this project later with `cruft link <template url>`")
        return
    template, commit = source
    answers = {k: v for k, v in ANSWERS.items() if k not in PRIVATE_KEYS and k != "__prompts__"}
    state = {
        "template": template,
        "commit": commit,
        "checkout": ANSWERS.get("_checkout"),
        "context": {"cookiecutter": {**answers, "_template": template, "_commit": commit}},
        "directory": None,
    }
    Path(".cruft.json").write_text(json.dumps(state, indent=2, ensure_ascii=False) + "\n")


def run(*command, what):
    result = subprocess.run(list(command), capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise StepFailed(f"{what} failed ({' '.join(command)}): {detail[-1] if detail else 'exit ' + str(result.returncode)}")
    return result.stdout


def dvc_remote_url():
    url = ANSWERS["dvc_remote_url"]
    if url:
        return url
    if ANSWERS["dvc_remote"] == "local":
        # A folder beside the project stands in for a bucket: push/pull work offline.
        return str(Path("..") / f"{ANSWERS['project_slug']}-dvc-remote")
    scheme = {"s3": "s3", "gs": "gs", "azure": "azure"}[ANSWERS["dvc_remote"]]
    return f"{scheme}://{ANSWERS['checkpoint_bucket']}/dvc"


def git_identity():
    """Use the user's git identity; fall back to the author answer if git has none."""
    configured = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True).stdout.strip()
    if configured:
        return []
    # git refuses names made only of characters it strips (<, >, \\, ...): fall back to a plain one.
    name = "".join(ch for ch in ANSWERS["author"] if ch not in '<>\\"').strip() or "Project author"
    return ["-c", f"user.name={name}", "-c", "user.email=noreply@example.com"]


def setup_vcs():
    git, dvc = shutil.which("git"), shutil.which("dvc")
    remote, endpoint = dvc_remote_url(), ANSWERS.get("s3_endpoint_url", "")
    if git:
        run(git, "init", "-q", "-b", "main", what="git init")
    if git and dvc:
        run(dvc, "init", "-q", what="dvc init")
        run(dvc, "config", "core.analytics", "false", what="dvc config")
        run(dvc, "remote", "add", "-d", "storage", remote, what="dvc remote add")
        if endpoint:  # an S3-compatible store (R2, MinIO, B2): DVC talks to its endpoint, not to AWS
            run(dvc, "remote", "modify", "storage", "endpointurl", endpoint, what="dvc remote modify")
        run(dvc, "add", DATASET, what="dvc add")
    if git:
        run(git, "add", "-A", what="git add")
        run(git, *git_identity(), "commit", "-q", "-m", "Initial project from cookiecutter-spot-lora", what="git commit")
    missing = [name for name, path in (("git", git), ("dvc", dvc)) if not path]
    if missing:
        print(f"note: {' and '.join(missing)} not found on PATH; to finish the setup, install them and run:")
        if not git:
            print("  git init -b main")
        print("  dvc init && dvc config core.analytics false")
        print(f"  dvc remote add -d storage {remote}")
        if endpoint:
            print(f"  dvc remote modify storage endpointurl {endpoint}")
        print(f"  dvc add {DATASET}")
        print("  git add -A && git commit -m 'Initial project'")


def main():
    try:
        prune()
        save_answers()
        save_cruft_state()
        run(sys.executable, "scripts/make_sample_data.py", "--out", DATASET, what="writing the sample dataset")
        setup_vcs()
    except (StepFailed, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    slug = ANSWERS["project_slug"]
    print(f"created {slug}/ — next: cd {slug} && make setup && make smoke")
    return 0


if __name__ == "__main__":
    sys.exit(main())
