"""Every fenced shell command of the READMEs and the generated project's docs, run as a user runs it.

One `make demo` (the template README's first command, into a temporary folder) makes the project
the generated docs' commands run in, so one bake and one smoke training serve them all; the
template README's "Use it" bake (its prompts answered) makes the other. A command that cannot
run here (a cloud, GitHub, a GPU, the network, a long training) is listed in COMMANDS with the
reason, and its options still go through the package's own parser. A fenced command that is
neither run nor listed fails the test, so the list stays complete: when you add one to a doc,
add it to COMMANDS.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TEMPLATE, VENV_BIN

PKG = "support_assistant_fine_tune"  # the package of a bake with the default answers (the demo's)
SLUG = "support-assistant-fine-tune"
SHELL_FENCES = {"bash", "sh", "shell", "console", "zsh"}


@dataclass(frozen=True)
class Run:
    """Run in `where` (demo: the demo project; fresh: the folder of the README's own bake)."""

    where: str
    instead: str | None = None  # a cheaper form of the command, or the placeholder filled in
    why: str = ""


@dataclass(frozen=True)
class Covered:
    """Run by the fixtures or another test, named in `by`."""

    by: str


@dataclass(frozen=True)
class NotRun:
    reason: str


CLOUD = "launches on a cloud (SkyPilot managed jobs): needs credentials and money"
SKY_JOBS = "talks to SkyPilot's managed jobs on a cloud"
GPU_BENCH = "needs a GPU: bench times the trainer on an 8B model's shape"
BASE_RUN = "needs the base model from the Hugging Face hub and an adapter trained on it"
STORAGE_DOC = "tests/test_storage.py::test_storage_doc_moves_a_project_to_an_s3_compatible_store (then its dvc push)"

# Every fenced shell command, as the rendered docs of the default bake show it (comments dropped,
# continuation lines joined). Runs happen in this order within each folder.
COMMANDS: dict[str, Run | Covered | NotRun] = {
    # README.md (the template)
    "make demo": Covered("the `demo` fixture: `make demo DEMO_DIR=<tmp>`, with .venv/bin not on PATH"),
    "make test": NotRun("this suite itself (make test runs tests/, this file included)"),
    "pip install cookiecutter dvc": NotRun("installs from PyPI; the venv these tests run in has both"),
    "cookiecutter path/to/cookiecutter-spot-lora": Run(
        "fresh", f"{{ echo 'Support Bot'; yes ''; }} | cookiecutter {shlex.quote(str(TEMPLATE))}",
        "the template's path for the placeholder; the prompts answered: project_name, then the defaults"),
    "cd support-bot && make setup && make smoke": Run(
        "fresh", "cd support-bot && make setup",
        "make setup with a stand-in .venv/bin/pip (the real one downloads GBs); the demo runs make smoke"),
    # README.md (generated)
    "make setup": Covered("`cd support-bot && make setup` above, and test_make_setup_picks_the_torch_build"),
    "make smoke": Covered("make demo runs it in the demo project (test_make_demo_bakes_with_dvc_trains_...)"),
    "make smoke-dpo": Run("demo", None, "the preference stage on the tiny model: writes the sample pairs, then prepare + train + evaluate"),
    f"{PKG} prepare --show 1 --set data.path=data/raw/support_preferences.jsonl": NotRun(
        "needs the base model's tokenizer from the Hugging Face hub; the baked tests/test_preference_data.py "
        "runs `prepare --show` on preference data with the real SmolLM2 tokenizer"),
    "cp my-conversations.jsonl data/raw/support.jsonl": Run("fresh", "cd support-bot && cp ../my-conversations.jsonl data/raw/support.jsonl",
                                                           "my-conversations.jsonl: 50 of the sample's records"),
    'dvc add data/raw/support.jsonl && git add data/raw/support.jsonl.dvc && git commit -m "New data"': Run(
        "fresh", 'cd support-bot && dvc add data/raw/support.jsonl && git add data/raw/support.jsonl.dvc && git commit -m "New data"'),
    "dvc push": Run("fresh", "cd support-bot && dvc push", "to the default remote, a local folder beside the project"),
    f"{PKG} chat": NotRun(BASE_RUN),
    f'{PKG} chat --prompt "My invoice is wrong."': NotRun(BASE_RUN),
    f"{PKG} chat --model outputs/merged": NotRun(BASE_RUN + " merged by `merge`"),
    f"{PKG} chat --smoke": Run("demo", f"printf 'My invoice is wrong.\\n/exit\\n' | {PKG} chat --smoke",
                               "a question typed, then /exit"),
    f"{PKG} export": NotRun(BASE_RUN + " (the tiny model's export runs below)"),
    f"{PKG} export --target gguf --target ollama": NotRun(BASE_RUN + " (the tiny model's export runs below)"),
    f"{PKG} export --smoke --target gguf --target ollama": Run("demo"),
    f"{PKG} prepare --show 3 --set model.base=Qwen/Qwen2.5-0.5B-Instruct": NotRun(
        "downloads the model's tokenizer from the Hugging Face hub"),
    f"{PKG} prepare --set data.path=hf:trl-lib/Capybara@train": NotRun("downloads a dataset from the Hugging Face hub"),
    f"{PKG} bench --shape 8b --seq 2048": NotRun(GPU_BENCH),
    f"{PKG} bench --shape 8b --seq 2048 --attention varlen": NotRun(GPU_BENCH),
    f"{PKG} bench --shape 8b --seq 2048 --compile true": NotRun(GPU_BENCH),
    f"{PKG} bench --shape 8b --method qlora --gpu-memory-gib 20": NotRun(GPU_BENCH),
    f"{PKG} bench --shape 8b --method qlora --global-batch 1 --gpu-memory-gib 24 --seq 85504 --set lora.r=32": NotRun(GPU_BENCH),
    f"accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 4 -m {PKG} train": NotRun(
        "needs 4 GPUs and trains the real model"),
    f"{PKG} report": Run("demo"),
    f"{PKG} report --pr 12 --format markdown": Run("demo"),
    f"{PKG} report --format json --plots reports/": Run("demo"),
    f"{PKG} report --smoke": Run("demo"),
    f"{PKG} sweep --set lora.r=8,16,32 --set train.learning_rate=1e-4,2e-4 --dry-run": Run("demo"),
    f"{PKG} sweep --set lora.r=8,16,32 --set train.learning_rate=1e-4,2e-4 --parallel 3": NotRun(CLOUD),
    f"{PKG} sweep --file sweeps/rank.yaml --backend local": NotRun(
        "trains every variant of the user's own sweep file here (a long training)"),
    f"{PKG} report --sweep sw-1201-0958-ab12": NotRun("needs a finished sweep (the id is an example)"),
    "pipx run cruft check": NotRun("pipx fetches cruft from PyPI; tests/test_upkeep.py runs cruft itself"),
    "pipx run cruft diff": NotRun("pipx fetches cruft from PyPI; tests/test_upkeep.py runs cruft itself"),
    "pipx run cruft update": NotRun("pipx fetches cruft from PyPI; tests/test_upkeep.py runs cruft update itself"),
    # docs/launch.md
    "make setup-sky": NotRun("installs SkyPilot from PyPI (make test makes .venv-sky the same way)"),
    'export PATH="$PWD/.venv-sky/bin:$PATH"': Run("demo"),
    'uv tool install "skypilot[aws,gcp,azure,lambda,runpod]==0.14.1"': NotRun("installs SkyPilot from PyPI"),
    "sky check": NotRun("checks cloud credentials"),
    "sky gpus list L4": NotRun("fetches SkyPilot's price catalog"),
    f"{PKG} launch --dry-run --set train.max_steps=500": Run("demo"),
    f"{PKG} launch --set train.max_steps=500": NotRun(CLOUD),
    'sky jobs launch -n my-run sky/train.yaml --env TRAIN_OVERRIDES="--set train.max_steps=500" --secret HF_TOKEN': NotRun(CLOUD),
    f"{PKG} launch --backend local --env TRAIN_OVERRIDES=--smoke": Run(
        "demo", f"{PKG} launch --backend local --env TRAIN_OVERRIDES=--smoke --dry-run",
        "the run itself is make smoke's training again, through the task's run section (the baked suite's test_launch.py runs it)"),
    "sky jobs queue": NotRun(SKY_JOBS),
    "sky jobs logs -n <name>": NotRun(SKY_JOBS),
    "sky jobs logs --controller -n <name>": NotRun(SKY_JOBS),
    "sky dashboard": NotRun(SKY_JOBS),
    "sky jobs cancel -n <name>": NotRun(SKY_JOBS),
    "sky jobs cancel -n <name> --graceful": NotRun(SKY_JOBS),
    # docs/storage.md: run against moto's S3 server on 127.0.0.1, placeholders filled in
    'pip install "dvc[s3]"': NotRun("installs from PyPI; the venv these tests run in has dvc-s3"),
    "dvc remote add -d -f storage s3://my-bucket/dvc": Covered(STORAGE_DOC),
    "dvc remote modify storage endpointurl https://<account id>.r2.cloudflarestorage.com": Covered(STORAGE_DOC),
    "dvc remote modify --local storage access_key_id <key id>": Covered(STORAGE_DOC),
    "dvc remote modify --local storage secret_access_key <secret>": Covered(STORAGE_DOC),
    "make mlflow-server MLFLOW_ARTIFACTS=s3://my-bucket/mlflow S3_ENDPOINT_URL=https://<account id>.r2.cloudflarestorage.com": Covered(
        "tests/test_storage.py's mlflow_server fixture runs it (bucket, endpoint and a free port filled in)"),
}


def strip_comment(line: str) -> str:
    """The line without its shell comment (a `#` starting a word outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def fenced_commands(text: str) -> list[str]:
    """The commands of the ```bash (sh, shell, console) blocks: comments dropped, continuations joined."""
    commands, fence, pending = [], None, ""
    for line in text.splitlines():
        marker = re.match(r"^\s*```\s*(\S*)", line)
        if marker:
            fence = None if fence is not None else marker.group(1).lower()
            continue
        if fence not in SHELL_FENCES:
            continue
        code = strip_comment(line).rstrip()
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        command = " ".join((pending + code).split())
        pending = ""
        if command:
            commands.append(command.removeprefix("$ "))
    return commands


def documents(project: Path) -> dict[str, str]:
    docs = {"README.md (template)": (TEMPLATE / "README.md").read_text(encoding="utf-8"),
            "README.md (generated)": (project / "README.md").read_text(encoding="utf-8")}
    docs.update({f"docs/{path.name}": path.read_text(encoding="utf-8") for path in sorted((project / "docs").glob("*.md"))})
    return docs


def without_venv_on_path(env: dict[str, str]) -> dict[str, str]:
    """The environment of a shell where the venv is not activated: its bin is not on PATH."""
    path = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry and Path(entry) != VENV_BIN]
    env = {key: value for key, value in env.items() if key != "VIRTUAL_ENV"}
    return {**env, "PATH": os.pathsep.join(path)}


def base_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **extra}


def shell(command: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env or base_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def venv_install_put_back(distribution: str):
    """Put back the venv's install of `distribution` as it was (or none) afterwards: `make demo` installs
    its project into the venv (editable), which would leave a developer's own demo pointing at a deleted
    temporary folder."""
    try:
        dist = importlib.metadata.distribution(distribution)
        paths = [Path(dist.locate_file(name)).resolve() for name in dist.files or [] if "__pycache__" not in str(name)]
        saved = {path: (path.read_bytes(), path.stat().st_mode) for path in paths if path.is_file()}
    except importlib.metadata.PackageNotFoundError:
        saved = {}
    try:
        yield
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", distribution],
                       capture_output=True, check=False, timeout=300)
        for path, (data, mode) in saved.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """`make demo` as a user runs it, from a shell without the venv's bin on PATH; (project, output)."""
    demo_dir = tmp_path_factory.mktemp("demo")
    make = shutil.which("make")
    assert make, "make is not installed"
    with venv_install_put_back(SLUG):
        result = subprocess.run(
            [make, "demo", f"DEMO_DIR={demo_dir}"], cwd=TEMPLATE, env=without_venv_on_path(base_env()),
            capture_output=True, text=True, timeout=1800, check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"make demo failed:\n{output[-4000:]}"
        yield demo_dir / SLUG, output


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """The folder where the template README's "Use it" commands run (the bake lands in support-bot/)."""
    return tmp_path_factory.mktemp("fresh")


def test_every_fenced_command_is_run_or_listed(demo):
    project, _ = demo
    found: dict[str, list[str]] = {}
    for name, text in documents(project).items():
        for command in fenced_commands(text):
            found.setdefault(command, []).append(name)
    unlisted = {command: names for command, names in found.items() if command not in COMMANDS}
    assert not unlisted, (
        "fenced commands neither run nor listed in tests/test_docs.py COMMANDS (run them, or list why not):\n"
        + "\n".join(f"  {command!r}  ({', '.join(names)})" for command, names in unlisted.items()))
    stale = sorted(set(COMMANDS) - set(found))
    assert not stale, f"COMMANDS lists commands no document shows any more: {stale}"


def test_make_demo_bakes_with_dvc_trains_and_says_how_to_open_mlflow(demo):
    project, output = demo
    hook_missing_tools = [line for line in output.splitlines() if "not found on PATH" in line]
    assert not hook_missing_tools, hook_missing_tools
    assert (project / ".dvc/config").is_file()
    tracked = subprocess.run(["git", "ls-files"], cwd=project, capture_output=True, text=True, check=True).stdout.split()
    assert "data/raw/support.jsonl.dvc" in tracked and "data/raw/support.jsonl" not in tracked
    assert "smoke run finished" in output
    assert (project / "outputs/smoke/metrics.json").is_file()
    assert re.search(r"open it: .*-m mlflow ui --backend-store-uri sqlite:///mlflow\.db --workers 1", output), output[-2000:]
    assert f"cd {project} && make mlflow-ui PYTHON=" in output


def test_make_setup_picks_the_torch_build(fresh, tmp_path):
    """`make setup` with a stand-in pip: the CPU build without a working nvidia-smi, CUDA's with one."""
    project = baked_fresh(fresh)
    make = shutil.which("make")
    cases = {  # what nvidia-smi does -> (TORCH, the line it prints, the torch install pip is asked for)
        "absent": ("", "the CPU build", "install torch --index-url https://download.pytorch.org/whl/cpu"),
        "fails": ("", "the CPU build", "install torch --index-url https://download.pytorch.org/whl/cpu"),
        "works": ("", "the default (CUDA) build", "install torch"),
        "absent, TORCH set": ("torch==2.5.1", "torch==2.5.1 from PyPI", "install torch==2.5.1"),
    }
    for case, (torch, says, install) in cases.items():
        folder = tmp_path / case.replace(" ", "").replace(",", "-")
        bin_dir = folder / "bin"  # PATH holds only this: no nvidia-smi but the stand-in's
        bin_dir.mkdir(parents=True)
        shutil.copy(project / "Makefile", folder / "Makefile")
        log = stand_in_venv(folder)
        if case in ("fails", "works"):
            write_script(bin_dir / "nvidia-smi", "exit 9" if case == "fails" else "echo 'GPU 0: NVIDIA H100'")
        result = subprocess.run([make, "setup", *([f"TORCH={torch}"] if torch else [])], cwd=folder,
                                env={"PATH": str(bin_dir), "HOME": str(folder)}, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, f"{case}: {result.stdout}\n{result.stderr}"
        said = [line for line in result.stdout.splitlines() if line.startswith("make setup: torch:")]
        assert len(said) == 1 and says in said[0], f"{case}: {result.stdout}"
        installs = log.read_text().splitlines()
        assert installs[0] == "install --upgrade pip" and installs[1] == install, f"{case}: {installs}"
        assert installs[2] == "install -e .[dev]", f"{case}: {installs}"


def write_script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def stand_in_venv(folder: Path) -> Path:
    """.venv/bin/python and pip that only write down what they were asked (the real install takes GBs)."""
    bin_dir = folder / ".venv/bin"
    bin_dir.mkdir(parents=True)
    log = folder / "pip.log"
    write_script(bin_dir / "python", "exit 0")
    write_script(bin_dir / "pip", f'printf "%s\\n" "$*" >> {shlex.quote(str(log))}')
    return log


def baked_fresh(folder: Path) -> Path:
    """The template README's bake (`cookiecutter <template>`, Support Bot), made once per folder."""
    project = folder / "support-bot"
    if not project.exists():
        result = shell(COMMANDS["cookiecutter path/to/cookiecutter-spot-lora"].instead, folder)
        assert result.returncode == 0, f"the README's cookiecutter command failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert (project / "Makefile").is_file()
    return project


def test_documented_commands_run_as_shown(demo, fresh):
    """Every Run entry, in order: the template README's bake and data commands in a fresh folder, the
    generated docs' commands in the demo project. All failures are reported together."""
    project, _ = demo
    baked_fresh(fresh)
    bot = fresh / "support-bot"
    stand_in_venv(bot)  # make setup's pip
    sample = (bot / "data/raw/support.jsonl").read_text().splitlines(keepends=True)
    (fresh / "my-conversations.jsonl").write_text("".join(sample[:50]))
    failures, ran = [], 0
    for command, how in COMMANDS.items():
        if not isinstance(how, Run) or command.startswith("cookiecutter "):
            continue
        cwd = fresh if how.where == "fresh" else project
        result = shell(how.instead or command, cwd)
        ran += 1
        if result.returncode != 0:
            failures.append(f"$ {how.instead or command}  (in {cwd}): exit {result.returncode}\n"
                            f"{result.stdout[-1500:]}\n{result.stderr[-1500:]}")
    assert not failures, "documented commands that fail:\n\n" + "\n\n".join(failures)
    assert ran >= 10
    # What the commands left behind, where the docs say.
    assert subprocess.run(["git", "log", "-1", "--format=%s"], cwd=bot, capture_output=True, text=True).stdout.strip() == "New data"
    assert (project / "reports").is_dir() and any((project / "reports").glob("*.png"))


def test_options_of_commands_not_run_are_accepted(demo):
    """The package's commands this machine cannot run still parse: a renamed option in the docs fails here."""
    project, _ = demo
    argvs = {}
    for command, how in COMMANDS.items():
        if isinstance(how, NotRun) and f"{PKG} " in command:
            argvs[command] = shlex.split(command.split(f"{PKG} ", 1)[1])
    assert len(argvs) >= 10
    check = (
        "import json, sys\n"
        f"from {PKG}.cli import build_parser\n"
        "bad = {}\n"
        "for command, argv in json.load(sys.stdin).items():\n"
        "    try:\n"
        "        build_parser().parse_args(argv)\n"
        "    except SystemExit as exit:\n"
        "        bad[command] = exit.code\n"
        "print(json.dumps(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=project, input=json.dumps(argvs), capture_output=True,
                            text=True, timeout=300, env=base_env(), check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    bad = json.loads(result.stdout.strip().splitlines()[-1])
    assert not bad, f"options the parser refuses (see stderr):\n{bad}\n{result.stderr[-3000:]}"


# --------------------------------------------------------------------------------------------
# The MLflow UI lines the demo prints: they work from the demo folder without an activated venv,
# show the demo's run, and leave no process behind when the UI is stopped.
# --------------------------------------------------------------------------------------------
@dataclass
class Ui:
    process: subprocess.Popen
    url: str
    marker: str
    command: str
    log: Path

    def says(self) -> str:
        return f"$ {self.command}\n{self.log.read_text(errors='replace')[-2000:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked_processes(marker: str) -> dict[int, list[str]]:
    """Processes whose environment holds `marker` (inherited by every descendant, daemons included)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
    return found


def wait_healthy(ui: Ui, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert ui.process.poll() is None, f"the UI exited with {ui.process.returncode} before answering:\n{ui.says()}"
        try:
            with urllib.request.urlopen(f"{ui.url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the UI at {ui.url} did not answer in {timeout:.0f} s:\n{ui.says()}")


def test_printed_mlflow_ui_lines_show_the_demo_run_and_leave_nothing_behind(demo, tmp_path):
    project, output = demo
    open_it = re.search(r"open it:\s+(.+?)\s+\(then http", output).group(1)
    make_line = re.search(r"^\s*(cd \S+ && make mlflow-ui PYTHON=\S+)\s*$", output, re.M).group(1)
    user_shell = without_venv_on_path(base_env())
    started: dict[str, Ui] = {}
    try:
        for name, line, cwd, port_arg in (("printed by smoke", open_it, project, "--port {}"),
                                          ("printed by make demo", make_line, TEMPLATE, "MLFLOW_PORT={}")):
            port, marker = free_port(), uuid.uuid4().hex
            command = f"{line} {port_arg.format(port)}"  # another port than 5000, which may be taken
            log = tmp_path / f"{port}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env={**user_shell, "DOCS_TEST_MARKER": marker},
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            started[name] = Ui(process, f"http://127.0.0.1:{port}", marker, command, log)
        experiment = f"{SLUG}-smoke"
        for name, ui in started.items():
            wait_healthy(ui)
            query = urllib.parse.urlencode({"experiment_name": experiment})
            with urllib.request.urlopen(f"{ui.url}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=30) as response:
                assert json.load(response)["experiment"]["name"] == experiment, f"{name}: {ui.says()}"
        for name, ui in started.items():
            running = {pid: " ".join(argv) for pid, argv in marked_processes(ui.marker).items()}
            shown = "\n".join(f"  {pid} {line[:160]}" for pid, line in running.items())
            # No job runner: it starts at once with the server, and its huey_consumer processes can outlive
            # a stopped UI. One worker: uvicorn's --workers 1 (its default is 4 processes).
            assert not [line for line in running.values() if "mlflow.server.jobs" in line or "huey" in line], \
                f"{name}: MLflow's job runner is running:\n{shown}"
            workers = [line for line in running.values() if " -m uvicorn " in line]
            assert len(workers) == 1 and "--workers 1" in workers[0], f"{name}:\n{shown}"
            # SIGTERM to MLflow itself, as `kill` or a process manager stops it (Ctrl-C signals the
            # whole process group, which would hide what a stopped server leaves running).
            servers = [pid for pid, argv in marked_processes(ui.marker).items() if argv[1:4] == ["-m", "mlflow", "ui"]]
            assert len(servers) == 1, f"{name}:\n{shown}\n{ui.says()}"
            os.kill(servers[0], signal.SIGTERM)
        for name, ui in started.items():
            deadline = time.monotonic() + 60  # the command itself (bash, make) counts among them until it ends
            while marked_processes(ui.marker) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = marked_processes(ui.marker)
            assert not left, f"{name}: {ui.command}\nstill running 60 s after SIGTERM to MLflow:\n" + "\n".join(
                f"  {pid} {' '.join(argv)[:160]}" for pid, argv in left.items())
    finally:
        for ui in started.values():
            for pid in marked_processes(ui.marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
