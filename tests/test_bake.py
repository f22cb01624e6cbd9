"""Bake the template with many answers and check the generated project.

Every baked project is a real one: the post-gen hook writes the sample dataset and runs git
and DVC, so each bake takes a couple of seconds. Baked projects are shared between the tests
that only read them (module-scoped fixtures) to keep the whole file fast.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from configobj import ConfigObj

from conftest import CONTEXT, TEMPLATE, VENV_BIN, bake, bake_cli, dvc_executable

DATASET = "data/raw/support.jsonl"
CHOICES = {key: value for key, value in CONTEXT.items() if isinstance(value, list) and not key.startswith("_")}
PUBLIC_KEYS = {key for key in CONTEXT if not key.startswith("_")}


def slug_of(answers: dict[str, str]) -> str:
    return answers.get("project_slug", "support-assistant-fine-tune")


def package_of(answers: dict[str, str]) -> str:
    return answers.get("package_name", slug_of(answers).replace("-", "_"))


# --------------------------------------------------------------------------------------------
# Every value of every choice variable, in six bakes (not the cartesian product).
# --------------------------------------------------------------------------------------------
COMBOS = {
    "defaults": {
        "finetune_method": "qlora", "checkpoint_store": "s3", "dvc_remote": "local", "gpu_runner": "skypilot",
        "python_version": "3.11", "license": "MIT",
    },
    "lora-gcs-gs-selfhosted": {
        "finetune_method": "lora", "checkpoint_store": "gcs", "dvc_remote": "gs", "gpu_runner": "self-hosted",
        "python_version": "3.12", "license": "Apache-2.0", "clouds": "gcp", "max_run_cost_usd": "7.5",
    },
    "dora-r2-s3-both": {
        "finetune_method": "dora", "checkpoint_store": "r2", "dvc_remote": "s3", "gpu_runner": "both",
        "python_version": "3.13", "license": "BSD-3-Clause", "clouds": "aws, runpod , vast", "max_run_cost_usd": "100",
    },
    "qlora-azure-azure-selfhosted": {
        "finetune_method": "qlora", "checkpoint_store": "azure", "dvc_remote": "azure", "gpu_runner": "self-hosted",
        "python_version": "3.10", "license": "Proprietary", "clouds": "azure,kubernetes", "max_run_cost_usd": "0.5",
        "project_name": "Azure Bot", "project_slug": "azure-bot", "checkpoint_bucket": "azure-bot-ckpt",
    },
    "explicit-s3-url": {
        "finetune_method": "lora", "checkpoint_store": "s3", "dvc_remote": "s3", "gpu_runner": "skypilot",
        "python_version": "3.12", "license": "MIT", "dvc_remote_url": "s3://team-datasets/support",
        "project_name": "Helpdesk", "project_slug": "helpdesk-llm", "package_name": "helpdesk",
        "mlflow_tracking_uri": "http://127.0.0.1:5000", "base_model": "./models/base",
    },
    "explicit-local-path": {
        "finetune_method": "dora", "checkpoint_store": "gcs", "dvc_remote": "local", "gpu_runner": "both",
        "python_version": "3.10", "license": "Apache-2.0", "dvc_remote_url": "/srv/dvc-store", "clouds": "lambda",
        "max_run_cost_usd": "1000", "github_repository": "acme/support-llm",
    },
}


def test_combos_cover_every_choice_value():
    for key, values in CHOICES.items():
        used = {combo.get(key, values[0]) for combo in COMBOS.values()}
        assert used == set(values), f"{key}: the bakes never use {sorted(set(values) - used)}"


@pytest.fixture(scope="module", params=list(COMBOS), ids=list(COMBOS))
def baked(request, tmp_path_factory):
    """(answers, project path) for one combination, baked once for all the tests that read it."""
    answers = COMBOS[request.param]
    tmp = tmp_path_factory.mktemp(f"bake-{request.param}")
    return answers, bake(tmp, **answers)


def expected(answers: dict[str, str], key: str) -> str:
    """The answer a bake with `answers` uses for `key` (explicit, else the template default)."""
    if key in answers:
        return answers[key]
    slug = slug_of(answers)
    derived = {
        "project_slug": slug,
        "package_name": package_of(answers),
        "github_repository": f"your-org/{slug}",
        "checkpoint_bucket": f"{slug}-checkpoints",
    }
    if key in derived:
        return derived[key]
    default = CONTEXT[key]
    return default[0] if isinstance(default, list) else default


def test_required_files(baked):
    answers, project = baked
    assert project.name == slug_of(answers)
    package = package_of(answers)
    required = [
        "README.md", "Makefile", "pyproject.toml", "params.yaml", "dvc.yaml", ".cookiecutter.json",
        DATASET, f"{DATASET}.dvc", "scripts/make_sample_data.py", f"src/{package}/cli.py",
    ]
    missing = [name for name in required if not (project / name).is_file()]
    assert missing == []
    assert (project / ".git").is_dir()
    assert (project / ".dvc" / "config").is_file()


def test_sky_folder_only_when_skypilot_is_used(baked):
    answers, project = baked
    uses_sky = answers["gpu_runner"] != "self-hosted"
    assert (project / "sky").is_dir() == uses_sky
    for path in ("docs/launch.md", "tests/test_sky.py", "tests/test_launch.py", "scripts/ci/launch_step.py"):
        assert (project / path).exists() == uses_sky, path


def test_sky_task(baked):
    answers, project = baked
    if answers["gpu_runner"] == "self-hosted":
        assert not (project / "sky").exists()
        return
    task = yaml.safe_load((project / "sky" / "train.yaml").read_text(encoding="utf-8"))
    assert task["name"] == f"{slug_of(answers)}-train"
    assert task["resources"]["use_spot"] is True
    clouds = [c.strip() for c in expected(answers, "clouds").split(",")]
    assert task["resources"]["any_of"] == [{"infra": cloud} for cloud in clouds]
    assert 75 in task["resources"]["job_recovery"]["recover_on_exit_codes"]
    mount = task["file_mounts"]["/checkpoints"]
    assert mount["name"] == expected(answers, "checkpoint_bucket")
    assert mount["store"] == answers["checkpoint_store"]
    # A local SQLite URI means nothing on a cloud VM: the task then keeps the store in the bucket.
    uri = expected(answers, "mlflow_tracking_uri")
    assert task["envs"]["MLFLOW_TRACKING_URI"] == ("" if uri.startswith(("sqlite:", "file:")) else uri)
    assert f"{package_of(answers)} prepare" in task["run"] and f"-m {package_of(answers)} " in task["run"]
    assert '--set "checkpoint.dir=${OUT}"' in task["run"]


LICENSE_MARKERS = {
    "MIT": "MIT License",
    "Apache-2.0": "Licensed under the Apache License, Version 2.0",
    "BSD-3-Clause": "BSD 3-Clause License",
    "Proprietary": "All rights reserved.",
}


def test_license_file(baked):
    answers, project = baked
    text = (project / "LICENSE").read_text(encoding="utf-8")
    for license_, marker in LICENSE_MARKERS.items():
        assert (marker in text) == (license_ == answers["license"]), marker
    copyright_ = [line for line in text.splitlines() if line.startswith("Copyright")]
    assert len(copyright_) == 1
    assert re.match(r"Copyright (\(c\) )?20\d\d,? ", copyright_[0])
    assert expected(answers, "author") in copyright_[0]


def test_params_yaml(baked):
    answers, project = baked
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    assert params["model"]["method"] == answers["finetune_method"]
    assert params["model"]["base"] == expected(answers, "base_model")
    budget = params["budget"]["max_run_usd"]
    assert isinstance(budget, (int, float)) and not isinstance(budget, bool), f"budget.max_run_usd is {budget!r}"
    assert budget == float(expected(answers, "max_run_cost_usd"))
    clouds = [c.strip() for c in expected(answers, "clouds").split(",")]
    assert params["compute"]["clouds"] == clouds
    assert params["tracking"]["uri"] == expected(answers, "mlflow_tracking_uri")
    assert params["tracking"]["experiment"] == slug_of(answers)
    assert params["data"]["path"] == DATASET


def test_pyproject_toml(baked):
    answers, project = baked
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    meta = pyproject["project"]
    assert meta["name"] == slug_of(answers)
    assert meta["requires-python"] == f">={answers['python_version']}"
    assert meta["description"] == expected(answers, "description")
    assert meta["authors"] == [{"name": expected(answers, "author")}]
    license_ = answers["license"]
    assert meta["license"] == ("LicenseRef-Proprietary" if license_ == "Proprietary" else license_)
    package = package_of(answers)
    assert meta["scripts"] == {package: f"{package}.cli:main"}


def test_dvc_remote(baked):
    answers, project = baked
    config = ConfigObj(str(project / ".dvc" / "config"))
    assert config["core"]["remote"] == "storage"
    url = config['remote "storage"']["url"]
    explicit = answers.get("dvc_remote_url", "")
    remote = answers["dvc_remote"]
    bucket = expected(answers, "checkpoint_bucket")
    if remote == "local" and not explicit:
        # A folder beside the project; DVC stores it relative to .dvc/.
        assert not os.path.isabs(url)
        assert url.endswith(f"{slug_of(answers)}-dvc-remote")
        assert (project / ".dvc" / url).resolve() == (project.parent / f"{slug_of(answers)}-dvc-remote").resolve()
    elif remote == "local" or explicit:
        assert url == explicit
    else:
        assert url == {"s3": f"s3://{bucket}/dvc", "gs": f"gs://{bucket}/dvc", "azure": f"azure://{bucket}/dvc"}[remote]


def test_cookiecutter_json_saves_the_answers(baked):
    answers, project = baked
    saved = json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))
    assert list(saved) == ["cookiecutter"]
    context = saved["cookiecutter"]
    assert PUBLIC_KEYS <= set(context)
    for key in PUBLIC_KEYS:
        assert context[key] == expected(answers, key), key
    assert not {"_output_dir", "_repo_dir", "_checkout", "__prompts__"} & set(context)


def git(project: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, check=True)
    return result.stdout


def test_git_has_one_commit_and_a_clean_tree(baked):
    _, project = baked
    assert git(project, "rev-list", "--count", "HEAD").strip() == "1"
    assert git(project, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(project, "branch", "--show-current").strip() == "main"
    tracked = set(git(project, "ls-files").splitlines())
    # DVC owns the dataset; git tracks its pointer file.
    assert f"{DATASET}.dvc" in tracked
    assert DATASET not in tracked


def test_dvc_status_data_is_up_to_date(baked):
    _, project = baked
    result = subprocess.run(
        [dvc_executable(), "status", "--json", f"{DATASET}.dvc"], cwd=project, check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {}
    pointer = yaml.safe_load((project / f"{DATASET}.dvc").read_text(encoding="utf-8"))
    data = (project / DATASET).read_bytes()
    assert pointer["outs"][0]["md5"] == hashlib.md5(data).hexdigest()
    assert pointer["outs"][0]["size"] == len(data)


# --------------------------------------------------------------------------------------------
# Whole-tree checks: no leftover Jinja, Python that compiles and lints.
# --------------------------------------------------------------------------------------------
# A Jinja construct left unrendered: `{{ ... }}`, `{% ... %}` or `{# ... #}` (a lone `}}` is
# only a nested JSON or Python dict closing, which rendered text is full of).
JINJA_CONSTRUCT = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|\{\{|\{%")
GITHUB_EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)


def baked_files(project: Path):
    for path in sorted(project.rglob("*")):
        rel = path.relative_to(project)
        if rel.parts[0] == ".git" or rel.parts[:2] == (".dvc", "cache") or rel.parts[:2] == (".dvc", "tmp"):
            continue
        if path.is_file():
            yield rel, path


def copied_without_render(rel: Path) -> bool:
    return any(
        fnmatch.fnmatch(rel.as_posix(), pattern) or fnmatch.fnmatch(rel.name, pattern)
        for pattern in CONTEXT.get("_copy_without_render", [])
    )


def test_no_unrendered_jinja(baked):
    _, project = baked
    checked, leftovers = 0, []
    for rel, path in baked_files(project):
        if copied_without_render(rel):
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if rel.parts[:2] == (".github", "workflows"):
            text = GITHUB_EXPRESSION.sub("", text)
        checked += 1
        for number, line in enumerate(text.splitlines(), 1):
            if JINJA_CONSTRUCT.search(line):
                leftovers.append(f"{rel}:{number}: {line.strip()}")
    assert checked >= 15
    assert leftovers == []


def test_python_files_compile(baked):
    _, project = baked
    sources = [(rel, path) for rel, path in baked_files(project) if path.suffix == ".py"]
    assert len(sources) >= 10
    for rel, path in sources:
        compile(path.read_text(encoding="utf-8"), str(rel), "exec")


def test_ruff_finds_no_errors(baked):
    _, project = baked
    targets = [name for name in ("src", "tests") if (project / name).is_dir()]
    assert "src" in targets
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--select", "F,E9", *targets],
        cwd=project, check=False, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sample_dataset_regenerates_byte_for_byte(baked, tmp_path):
    _, project = baked
    out = tmp_path / "again" / "support.jsonl"
    result = subprocess.run(
        [sys.executable, str(project / "scripts" / "make_sample_data.py"), "--out", str(out)],
        cwd=tmp_path, check=False, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    original = (project / DATASET).read_bytes()
    assert len(original.splitlines()) == 400
    assert out.read_bytes() == original


# --------------------------------------------------------------------------------------------
# Hostile answers that must bake safely: they are data, never code or markup.
# --------------------------------------------------------------------------------------------
INJECTION = """'; import os; os.system("touch PWNED") #"""
HOSTILE = {
    "quotes": {
        "project_name": 'He said "hi" & it\'s """fine"""',
        "project_slug": "quotes-project",
        "description": '"""; import os; os.system("touch PWNED"); """',
        "author": "O'Brien \"The Dev\" '''",
    },
    "backslashes": {
        "project_name": "C:\\new\\table ends with \\",
        "project_slug": "backslash-project",
        "description": 'path C:\\Users\\x\\ then \\n, \\u0041, \\" and a trailing \\',
        "author": "Bob \\",
    },
    "injection": {
        "project_name": INJECTION,
        "project_slug": "pwned-check",
        "package_name": "pwned_check",
        "description": INJECTION + ' """ \\',
        "author": INJECTION,
    },
    "unicode-and-html": {
        "project_name": "Ünïcødé 支援 <script>alert('x')</script>",
        "project_slug": "unicode-project",
        "description": 'Ünïcødé 支援 — <script>alert("x")</script> &amp; </textarea>',
        "author": "Zoë 李 <b>bold</b>",
    },
    "non-bmp-emoji": {
        "project_name": "Rocket 🚀 Bot",
        "project_slug": "rocket-bot",
        "description": "Support bot 🚀 with emoji 🤖 outside the BMP",
        "author": "Dev 🤖",
    },
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_answers_bake_safely(case, tmp_path, monkeypatch):
    answers = HOSTILE[case]
    start_dir = Path.cwd()
    monkeypatch.chdir(tmp_path)
    project = bake(tmp_path, **answers)

    assert project == tmp_path / answers["project_slug"]
    assert list(tmp_path.rglob("PWNED")) == []
    assert not (start_dir / "PWNED").exists()
    assert not (TEMPLATE / "PWNED").exists()

    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["description"] == answers["description"]
    assert pyproject["project"]["authors"] == [{"name": answers["author"]}]

    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    assert params["model"]["method"] == "qlora"
    assert params["tracking"]["experiment"] == answers["project_slug"]

    saved = json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))["cookiecutter"]
    for key in ("project_name", "description", "author", "project_slug"):
        assert saved[key] == answers[key], key

    readme = (project / "README.md").read_text(encoding="utf-8").splitlines()
    assert readme[0] == f"# {answers['project_name']}"
    assert answers["description"] in readme
    copyright_ = [line for line in (project / "LICENSE").read_text(encoding="utf-8").splitlines() if "Copyright" in line]
    assert answers["author"] in copyright_[0]

    for rel, path in baked_files(project):
        if path.suffix == ".py":
            compile(path.read_text(encoding="utf-8"), str(rel), "exec")
    assert git(project, "status", "--porcelain") == ""


# --------------------------------------------------------------------------------------------
# Bad answers that the pre-gen hook must refuse, with one line naming the field.
# --------------------------------------------------------------------------------------------
REFUSED = [
    ("project_name", {"project_name": "Two\nLines", "project_slug": "two-lines"}),
    ("project_slug", {"project_slug": "My Project"}),
    ("project_slug", {"project_slug": "UPPER-case"}),
    ("package_name", {"package_name": "class"}),
    ("package_name", {"package_name": "torch"}),
    ("package_name", {"package_name": "1abc"}),
    ("github_repository", {"github_repository": "no-slash-here"}),
    ("clouds", {"clouds": "aws,moon"}),
    ("checkpoint_bucket", {"checkpoint_store": "s3", "checkpoint_bucket": "My_Bucket"}),
    ("checkpoint_bucket", {"checkpoint_store": "gcs", "checkpoint_bucket": "google-checkpoints"}),
    ("checkpoint_bucket", {"checkpoint_store": "azure", "checkpoint_bucket": "my--container"}),
    ("max_run_cost_usd", {"max_run_cost_usd": "abc"}),
    ("max_run_cost_usd", {"max_run_cost_usd": "-5"}),
    ("mlflow_tracking_uri", {"mlflow_tracking_uri": "not a uri"}),
    ("dvc_remote_url", {"dvc_remote": "s3", "dvc_remote_url": "gs://x"}),
]


@pytest.mark.parametrize(
    ("field", "answers"), REFUSED, ids=[f"{field}-{'-'.join(map(repr, a.values()))}" for field, a in REFUSED]
)
def test_bad_answers_are_refused_cleanly(field, answers, tmp_path):
    result = bake_cli(tmp_path, **answers)
    assert result.returncode != 0
    errors = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("error: ")]
    assert errors, result.stderr + result.stdout
    assert errors[0].startswith(f"error: {field}: "), errors
    assert list(tmp_path.iterdir()) == [], "a project folder was left behind"


def test_clouds_with_an_empty_entry_is_refused_or_rendered_without_it(tmp_path):
    """The pre-gen hook skips empty entries in "aws,,gcp"; the rendered files must do the same
    (or the hook must refuse the answer). Never a bake that dies later with an unrelated error."""
    result = bake_cli(tmp_path, clouds="aws,,gcp")
    output = result.stderr + result.stdout
    if result.returncode != 0:
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert errors and errors[0].startswith("error: clouds: "), output
        assert list(tmp_path.iterdir()) == []
        return
    project = tmp_path / "support-assistant-fine-tune"
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    assert params["compute"]["clouds"] == ["aws", "gcp"]
    task = yaml.safe_load((project / "sky" / "train.yaml").read_text(encoding="utf-8"))
    assert task["resources"]["any_of"] == [{"cloud": "aws"}, {"cloud": "gcp"}]


def test_cost_in_exponent_notation_is_refused_or_rendered_as_a_number(tmp_path):
    """float() accepts "1e3", but YAML 1.1 reads a bare 1e3 as a string: the hook must refuse
    it, or params.yaml must hold the number."""
    result = bake_cli(tmp_path, max_run_cost_usd="1e3")
    output = result.stderr + result.stdout
    if result.returncode != 0:
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert errors and errors[0].startswith("error: max_run_cost_usd: "), output
        assert list(tmp_path.iterdir()) == []
        return
    params = yaml.safe_load((tmp_path / "support-assistant-fine-tune" / "params.yaml").read_text(encoding="utf-8"))
    budget = params["budget"]["max_run_usd"]
    assert isinstance(budget, (int, float)), f"budget.max_run_usd is {budget!r}"
    assert budget == 1000


# --------------------------------------------------------------------------------------------
# Post-gen: a failing step leaves nothing behind; missing tools are explained, not fatal.
# --------------------------------------------------------------------------------------------
def test_post_gen_failure_leaves_no_half_baked_project(tmp_path, tmp_path_factory):
    fake_bin = tmp_path_factory.mktemp("fake-dvc-bin")
    fake = fake_bin / "dvc"
    fake.write_text("#!/bin/sh\necho 'fake dvc: simulated failure' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = bake_cli(tmp_path, env={"PATH": os.pathsep.join([str(fake_bin), os.environ["PATH"]])})
    output = result.stderr + result.stdout
    assert result.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert "dvc" in errors[0]
    assert "fake dvc: simulated failure" in errors[0]
    assert not (tmp_path / "support-assistant-fine-tune").exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_dvc_prints_the_commands_to_finish(tmp_path, tmp_path_factory):
    git_path = shutil.which("git")
    assert git_path
    tools = tmp_path_factory.mktemp("git-only-bin")
    (tools / "git").symlink_to(git_path)
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if d and not shutil.which("dvc", path=d)]
    path = os.pathsep.join([str(tools), *dirs])
    assert shutil.which("dvc", path=path) is None
    assert shutil.which("git", path=path) is not None
    assert str(VENV_BIN) not in dirs or not (VENV_BIN / "dvc").exists()

    result = bake_cli(tmp_path, env={"PATH": path})
    assert result.returncode == 0, result.stderr + result.stdout
    lines = [line.strip() for line in result.stdout.splitlines()]
    slug = "support-assistant-fine-tune"
    assert "note: dvc not found on PATH; to finish the setup, install them and run:" in lines
    assert "dvc init && dvc config core.analytics false" in lines
    assert f"dvc remote add -d storage {os.path.join('..', f'{slug}-dvc-remote')}" in lines
    assert f"dvc add {DATASET}" in lines

    project = tmp_path / slug
    assert (project / ".git").is_dir()
    assert not (project / ".dvc").exists()
    assert not (project / f"{DATASET}.dvc").exists()
    assert git(project, "rev-list", "--count", "HEAD").strip() == "1"
    assert git(project, "status", "--porcelain") == ""


# --------------------------------------------------------------------------------------------
# Speed: a default bake, git and DVC included.
# --------------------------------------------------------------------------------------------
def test_default_bake_is_fast(tmp_path):
    start = time.perf_counter()
    project = bake(tmp_path)
    elapsed = time.perf_counter() - start
    assert (project / ".dvc" / "config").is_file()
    assert git(project, "rev-list", "--count", "HEAD").strip() == "1"
    # A guard against a hook that installs or downloads (minutes), not a timing: the bake takes
    # 1-3 s alone and up to 7 s beside the baked suite, which `make test` runs at the same time.
    assert elapsed < 20, f"default bake took {elapsed:.1f} s"


SKY_BAKES = [
    {"gpu_runner": "skypilot", "clouds": "aws,gcp", "checkpoint_store": "s3"},
    {"gpu_runner": "both", "clouds": "azure,lambda,runpod", "checkpoint_store": "azure"},
    {"gpu_runner": "skypilot", "clouds": "gcp,kubernetes", "checkpoint_store": "gcs", "dvc_remote": "gs"},
    {"gpu_runner": "both", "clouds": "vast,oci,nebius", "checkpoint_store": "r2"},
]


@pytest.mark.parametrize("answers", SKY_BAKES, ids=lambda a: f"{a['gpu_runner']}-{a['checkpoint_store']}")
def test_sky_task_files_pass_our_validator_and_skypilots_parser(tmp_path, answers):
    """Every task file of these bakes: our job_recovery validator, then `sky.Task.from_yaml`
    in SkyPilot's own virtualenv (SKY_PYTHON, set by `make test`)."""
    project = bake(tmp_path, project_name="Sky Bake", **answers)
    tasks = sorted(str(p) for p in (project / "sky").glob("*.yaml"))
    assert len(tasks) == 2
    assert os.environ.get("SKY_PYTHON"), "SKY_PYTHON is not set: run the tests through `make test`"
    result = subprocess.run(
        [sys.executable, "-m", "sky_bake.compute.skytask", *tasks], cwd=project, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(project / "src")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: 2 task file(s), also accepted by SkyPilot" in result.stdout
