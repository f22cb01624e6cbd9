"""Template upkeep: a project baked with plain `cookiecutter` takes a later version of the
template with `cruft update`, keeping its own edits and reporting a conflicting one.

For real: the template is copied into a temporary git repository (commit A), a project is
baked from it, the copy gets a commit B that changes a generated file, and the real `cruft`
command updates the project from A to B. cruft renders both commits again, which runs the
hooks again (git init, dvc init, the dataset): the pyproject's `[tool.cruft] skip` keeps what
they make out of the update.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEMPLATE, VENV_BIN

SLUG = "support-assistant-fine-tune"
# Copied into the temporary template repository: the template itself, not what was built here.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv*", "build", "node_modules", "__pycache__", ".pytest_cache",
                                    ".ruff_cache", "*.egg-info")
README = "{{cookiecutter.project_slug}}/README.md"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def status(project: Path) -> list[str]:
    """`git status --porcelain` lines: two status letters, a space, the path."""
    return subprocess.run(["git", "status", "--porcelain"], cwd=project, check=True, capture_output=True,
                          text=True).stdout.splitlines()


def cruft(project: Path, *args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("cruft", path=str(VENV_BIN)) or shutil.which("cruft")
    assert executable, "cruft is not installed in the test environment (requirements-test.txt)"
    return subprocess.run([executable, *args], cwd=project, capture_output=True, text=True, timeout=600)


def bake(template: Path, out: Path, relative: bool = False) -> Path:
    """`cookiecutter --no-input <template>` in `out`; the template as a relative path if asked."""
    out.mkdir()
    given = os.path.relpath(template, out) if relative else str(template)
    done = subprocess.run([sys.executable, "-m", "cookiecutter", "--no-input", given], cwd=out,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out / SLUG


def readme_line(text: str) -> str:
    """A line of the generated README that commit B rewrites (the first heading)."""
    return next(line for line in text.splitlines() if line.startswith("# "))


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("upkeep") / "template"
    shutil.copytree(TEMPLATE, root, ignore=NOT_COPIED)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "A")
    return root, git(root, "rev-parse", "HEAD")


def commit_b(template: Path) -> tuple[str, str, str]:
    """Commit B: the generated README's heading and a new line at its end. Returns (old heading,
    new heading, commit)."""
    path = template / README
    text = path.read_text()
    old = readme_line(text)
    new = old + " (now updated by the template)"
    path.write_text(text.replace(old, new, 1) + "\nA line added by a later version of the template.\n")
    git(template, "commit", "-q", "-am", "B")
    return old, new, git(template, "rev-parse", "HEAD")


def test_a_plain_cookiecutter_bake_records_what_cruft_needs(template_repo, tmp_path):
    template, commit_a = template_repo
    project = bake(template, tmp_path / "out", relative=True)  # `cookiecutter ../template`: found all the same
    state = json.loads((project / ".cruft.json").read_text())
    assert state["template"] == str(template.resolve()) and state["commit"] == commit_a
    assert state["context"]["cookiecutter"]["project_slug"] == SLUG
    assert status(project) == []  # .cruft.json is part of the first commit
    assert "_commit" not in json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    checked = cruft(project, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr  # up to date with A


def test_update_applies_the_template_change_keeps_user_edits_and_reports_a_conflict(template_repo, tmp_path):
    template, commit_a = template_repo
    clean = bake(template, tmp_path / "clean")
    conflicting = bake(template, tmp_path / "conflicting")

    # The users' own work: a parameter changed in both; in the second, the heading too.
    for project in (clean, conflicting):
        params = project / "params.yaml"
        params.write_text(params.read_text().replace("  r: 16\n", "  r: 24\n", 1))
        git(project, "commit", "-q", "-am", "Rank 24")
    user_heading = "# Our support bot (edited by its team)"
    readme = conflicting / "README.md"
    original_heading = readme_line(readme.read_text())
    readme.write_text(readme.read_text().replace(original_heading, user_heading, 1))
    git(conflicting, "commit", "-q", "-am", "Our heading")

    _, _, commit_b_sha = commit_b(template)

    # 1. No conflict: B's change arrives, the user's edit stays.
    checked = cruft(clean, "check")
    assert checked.returncode != 0  # cruft sees that the template moved on
    done = cruft(clean, "update", "--skip-apply-ask")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (clean / "README.md").read_text()
    assert readme_line(text).endswith("(now updated by the template)")
    assert text.endswith("A line added by a later version of the template.\n")
    assert "  r: 24\n" in (clean / "params.yaml").read_text()
    assert json.loads((clean / ".cruft.json").read_text())["commit"] == commit_b_sha
    changed = sorted(line[3:] for line in status(clean))
    assert changed == [".cruft.json", "README.md"]  # nothing else: not the dataset, .git, .dvc or the answers
    assert (clean / "data/raw/support.jsonl.dvc").is_file() and git(clean, "rev-list", "--count", "HEAD") == "2"

    # 2. The same line edited by the user: reported, and the user's text is not overwritten.
    done = cruft(conflicting, "update", "--skip-apply-ask")
    output = done.stdout + done.stderr
    assert "README.md" in output and "conflict" in output.lower(), output
    text = readme.read_text()
    assert user_heading in text  # kept: inside git's conflict markers, next to B's version
    ours, theirs = text.split("<<<<<<<", 1)[1].split(">>>>>>>", 1)[0].split("=======")
    assert user_heading in ours and "(now updated by the template)" in theirs
    assert text.endswith("A line added by a later version of the template.\n")  # the part that merged cleanly
    assert "UU README.md" in status(conflicting)
    assert "  r: 24\n" in (conflicting / "params.yaml").read_text()


def commit_move(template: Path) -> str:
    """Commit C: a module of the generated package moves (train/outputs.py -> train/saving.py),
    and its one importer follows: the kind of change a layout change makes. Returns the commit."""
    package = template / "{{cookiecutter.project_slug}}" / "src" / "{{cookiecutter.package_name}}"
    git(template, "mv", str(package / "train" / "outputs.py"), str(package / "train" / "saving.py"))
    importer = package / "train" / "run.py"
    importer.write_text(importer.read_text().replace("from .outputs import", "from .saving import"))
    git(template, "commit", "-q", "-am", "C: move a module")
    return git(template, "rev-parse", "HEAD")


def test_update_moves_a_module_and_keeps_the_users_edit_inside_it(template_repo, tmp_path):
    template, _ = template_repo
    project = bake(template, tmp_path / "moved")
    package = project / "src" / SLUG.replace("-", "_")
    old, new = package / "train" / "outputs.py", package / "train" / "saving.py"
    # The user's own edit inside the module that will move, and one elsewhere.
    edited = old.read_text() + "\n# Our team's note: keep the tokenizer with the adapter.\n"
    old.write_text(edited)
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("  r: 16\n", "  r: 24\n", 1))
    git(project, "commit", "-q", "-am", "Our edits")

    commit = commit_move(template)
    done = cruft(project, "update", "--skip-apply-ask")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not old.exists() and new.read_text() == edited  # moved, with the user's line in it
    assert "from .saving import" in (package / "train" / "run.py").read_text()
    assert "  r: 24\n" in params.read_text()
    assert json.loads((project / ".cruft.json").read_text())["commit"] == commit
    # The moved package still imports and runs: the CLI answers.
    env = dict(os.environ, PYTHONPATH=str(project / "src"))
    helped = subprocess.run([sys.executable, "-m", SLUG.replace("-", "_"), "train", "--help"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "--resume" in helped.stdout, helped.stderr[-2000:]
