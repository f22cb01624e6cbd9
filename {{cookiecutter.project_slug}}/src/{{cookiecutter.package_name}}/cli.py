"""Command line: `{{ cookiecutter.package_name }} prepare | train | evaluate | export | merge | chat | report | smoke | ...`.

Exit codes (documented in the README; SkyPilot recovery and retry loops act on them):
  0   success
  1   tracking-sync: some MLflow updates were not delivered (the server is still
      unreachable: rerun later; or unreadable spool files were moved to quarantine/).
      sweep: it ran to the end but some variant failed.
  2   invalid input: bad params, bad data, a model that cannot be loaded, missing files,
      a checkpoint made with other params. Fix and rerun; retrying won't help.
  3   budget exceeded: `plan` / `launch` estimate the run above budget.max_run_usd, or a
      running job's cost crossed it (a checkpoint was saved).
      `sweep`: the variants together are estimated above the sweep budget, or the sweep
      stopped before a variant that would cross it.
  74  an output could not be written: a full disk, a quota, a read-only folder (the message
      names the folder, the free and the needed space; the previous checkpoint or output is
      kept). Free space and rerun; retrying as is would hit the same wall, so neither
      scripts/train_with_retries.sh nor the SkyPilot task retries it.
  75  interrupted (SIGTERM / SIGINT, e.g. a spot notice) after a checkpoint was saved:
      rerun the same command to resume. SkyPilot's job recovery retries on this code.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from .atomic import OUT_OF_SPACE, WriteFailed, write_failed
from .compute.plan import BudgetExceeded as PlanOverBudget
from .config import ConfigError, Params, load_params
from .data import DataError
from .model.loading import ModelNotFound
from .train import BudgetExceeded, Interrupted
from .train.checkpoints import IncompatibleCheckpoint

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_BUDGET = 3
EXIT_NOT_SENT = 1  # tracking-sync: updates still pending, or unreadable ones quarantined
EXIT_WRITE_FAILED = 74  # EX_IOERR: do not retry until space is freed
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again

TINY_MODEL_DIR = Path(".cache/tiny-model")


def smoke_overrides(params: Params) -> list[str]:
    """A tiny random model and a short schedule: every stage runs on a CPU in seconds."""
    return [
        f"model.base={TINY_MODEL_DIR}",
        "model.method=lora",
        "model.dtype=float32",
        "compute.device=cpu",
        "data.max_length=512",
        "data.prepared_dir=data/prepared-smoke",
        "train.max_steps=60",
        "train.micro_batch=4",
        "train.global_batch=8",
        "train.learning_rate=0.01",
        "train.warmup_steps=3",
        "train.log_every_steps=10",
        "train.output_dir=outputs/smoke",
        "eval.generations=8",
        "eval.max_new_tokens=24",
        "checkpoint.dir=checkpoints/smoke",
        f"tracking.experiment={params.tracking.experiment}-smoke",
    ]


def ensure_tiny_model(data_path: str) -> None:
    if not (TINY_MODEL_DIR / "config.json").is_file():
        from .tiny import build_tiny_model

        print(f"building the tiny test model in {TINY_MODEL_DIR} (tokenizer trained on {data_path})")
        build_tiny_model(TINY_MODEL_DIR, data_path)


def resolve_params(args) -> Params:
    params = load_params(args.params, args.set)
    if getattr(args, "smoke", False):
        # User --set values still win over the smoke defaults.
        params = load_params(args.params, smoke_overrides(params) + args.set)
        ensure_tiny_model(params.data.path)
    return params


def cmd_prepare(params: Params, show: int | None = None) -> None:
    from . import data

    if show is not None:
        from .data.show import show_examples

        show_examples(params, show, color=sys.stdout.isatty())
        return
    data.prepare(params)


def cmd_train(params: Params, resume: str = "auto") -> None:
    from .train import train

    train(params, resume=resume)


def cmd_evaluate(params: Params) -> None:
    from .evaluate import evaluate

    evaluate(params)


def cmd_merge(params: Params, args) -> None:
    from .export.merged import merge

    merge(params, args.out or f"{params.train.output_dir}/merged", args.dtype)


def cmd_export(params: Params, args) -> None:
    from .export.stage import export

    export(params, args.target)


def cmd_chat(params: Params, args) -> int:
    from .chat import chat

    return chat(params, args.model, args.adapter, args.prompt, args.system, args.max_new_tokens, args.temperature,
                args.show_prompt)


def cmd_smoke(params: Params, resume: str = "never") -> None:
    started = time.perf_counter()
    cmd_prepare(params)
    cmd_train(params, resume)
    cmd_evaluate(params)
    from .tracking import tracking_uri

    uri = tracking_uri(params)
    print(f"\nsmoke run finished in {time.perf_counter() - started:.0f} s")
    print(f"  metrics:  {params.train.output_dir}/metrics.json")
    print(f"  adapter:  {params.train.output_dir}/adapter")
    print(f"  MLflow:   experiment '{params.tracking.experiment}' at {uri}")
    if uri.startswith("sqlite:"):
        # This interpreter, so the line works without an activated venv; without MLflow's job runner
        # (its huey_consumer processes outlive a stopped UI) and with one worker: browsing needs neither.
        python = shlex.quote(sys.executable or "python")
        print(
            f"  open it:  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {python} -m mlflow ui --backend-store-uri"
            f" {shlex.quote(uri)} --workers 1   (then http://127.0.0.1:5000)"
        )


def cmd_tracking_sync(params: Params) -> None:
    from .tracking import sync_spools, tracking_uri

    sent, pending, quarantined = sync_spools(Path(params.checkpoint.dir), tracking_uri(params))
    print(f"MLflow: {sent} spool(s) sent, {pending} still pending, {quarantined} unreadable update(s) quarantined")
    if pending or quarantined:
        raise SystemExit(EXIT_NOT_SENT)


def cmd_tiny_model(args) -> None:
    from .tiny import build_tiny_model

    out = build_tiny_model(args.out, args.data)
    print(f"tiny model written to {out}")


COMMANDS = {
    "prepare": (cmd_prepare, "validate, tokenize and pack the dataset (DVC stage 'prepare')"),
    "train": (cmd_train, "train the adapter, logging to MLflow (DVC stage 'train')"),
    "evaluate": (cmd_evaluate, "loss, token accuracy and scored answers, compared with main's run -> metrics.json (DVC stage 'evaluate')"),
    "export": (cmd_export, "ship the trained model: the adapter for vLLM, a merged model, GGUF for llama.cpp, an Ollama Modelfile"),
    "merge": (cmd_merge, "merge the adapter into the base model (16-bit) -> a standard model directory (= export --target merged)"),
    "chat": (cmd_chat, "talk to the trained model (base + adapter, or --model DIR): a prompt loop, or --prompt TEXT once"),
    "smoke": (cmd_smoke, "prepare + train + evaluate on the tiny model, on CPU, in about a minute"),
    "tracking-sync": (cmd_tracking_sync, "send MLflow updates kept on disk while the server was unreachable"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="{{ cookiecutter.package_name }}", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        sub.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter, e.g. --set train.max_steps=50"
        )
        if name != "smoke":
            sub.add_argument("--smoke", action="store_true", help="use the tiny model and a short schedule (CPU, seconds)")
        if name in ("train", "smoke"):
            sub.add_argument(
                "--resume", default="auto" if name == "train" else "never", metavar="auto|never|PATH",
                help="auto: continue from the newest valid checkpoint of this configuration (default for train); "
                "never: start afresh; or a checkpoint directory",
            )
        if name == "prepare":
            sub.add_argument(
                "--show", type=int, metavar="N",
                help="print N examples as rendered for the model (taken in turn from each file, evenly spaced, each with its file:line), the trained part marked; write nothing",
            )
        if name == "export":
            sub.add_argument("--target", action="append", choices=["vllm", "merged", "gguf", "ollama"],
                             help="what to write (repeatable; default: export.targets in params.yaml)")
        if name == "merge":
            sub.add_argument("--out", help="output directory (default: <train.output_dir>/merged)")
            sub.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
        if name == "chat":
            sub.add_argument("--model", metavar="DIR", help="a model directory (what `merge` writes) instead of base + adapter")
            sub.add_argument("--adapter", metavar="DIR", help="the adapter (default: <train.output_dir>/adapter)")
            sub.add_argument("--prompt", metavar="TEXT", help="answer this once, print the answer and exit")
            sub.add_argument("--system", metavar="TEXT", help="a system prompt for the conversation")
            sub.add_argument("--max-new-tokens", type=int, metavar="N", help="longest answer (default: eval.max_new_tokens)")
            sub.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sample")
            sub.add_argument("--show-prompt", action="store_true", help="print each prompt as the model sees it (stderr)")
    from . import bench, report
    from .compute import launch, plan, sweep

    plan.register(commands)
    launch.register(commands)
    report.register(commands)
    bench.register(commands)
    sweep.register(commands)
    tiny = commands.add_parser("tiny-model", help="build the tiny random test model")
    tiny.add_argument("--out", default=str(TINY_MODEL_DIR))
    tiny.add_argument("--data", default="data/raw/support.jsonl", help="JSONL to train the tokenizer on")
    return parser


def quiet_library_noise() -> None:
    """Hide messages about library internals that a user cannot act on."""
    import logging
    import warnings

    # PEFT still calls transformers' renamed `is_gradient_checkpointing` property, and we call
    # `gradient_checkpointing_enable`: its new name is missing from transformers before 5.2x.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*deprecated", category=FutureWarning)
    # bitsandbytes tries to fetch optional CPU kernels from a hub at import time.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # MLflow's start/stop notices for system metrics and its local database set-up.
    for name in ("mlflow.system_metrics", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    code = run_command(argv)
    # Launchers (accelerate, torchrun) report any failed process as exit 1. A multi-GPU run
    # script reads the real code from here: 75 (stopped by a spot notice) means "retry".
    if os.environ.get("EXIT_CODE_FILE"):
        Path(os.environ["EXIT_CODE_FILE"]).write_text(f"{code}\n")
    return code


def run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_noise()
    try:
        if args.command == "tiny-model":
            cmd_tiny_model(args)
            return EXIT_OK
        if args.command in ("plan", "launch", "report", "bench"):
            from . import bench, report
            from .compute import launch, plan

            return {"plan": plan, "launch": launch, "report": report, "bench": bench}[args.command].run(args)
        if args.command == "sweep":
            from .compute import sweep

            return sweep.run(args)
        if args.command == "smoke":
            args.smoke = True
        params = resolve_params(args)
        if args.command == "merge":
            cmd_merge(params, args)
        elif args.command == "export":
            cmd_export(params, args)
        elif args.command == "chat":
            return cmd_chat(params, args)
        elif args.command == "train":
            cmd_train(params, args.resume)
        elif args.command == "smoke":
            cmd_smoke(params, args.resume)
        elif args.command == "prepare":
            cmd_prepare(params, args.show)
        else:
            COMMANDS[args.command][0](params)
    except (ConfigError, DataError, ModelNotFound, IncompatibleCheckpoint) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except WriteFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except OSError as err:  # a full disk under a write that has no message of its own (a plot, a CSV)
        if err.errno not in OUT_OF_SPACE:
            raise
        print(f"error: {write_failed(err.filename or 'output', err, None)}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BudgetExceeded, PlanOverBudget) as err:
        print(f"budget exceeded: {err}", file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_OK
