"""`export`: the chosen targets under <train.output_dir>/export/, listed in exports.json and in
the run's MLflow run (paths, sizes, the checks that passed).

    export/vllm/        the adapter, as vLLM loads it        (vllm; refused adapters: see merged/)
    export/merged/      the merged 16-bit model directory    (merged, and vllm's fallback)
    export/gguf/        <name>-F16.gguf, ... and Modelfile   (gguf, ollama)
    export/exports.json what was written, its checks, the commands that serve it
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..atomic import atomic_dir, size_of, write_text_atomic
from ..data import DataError
from . import merged as merging
from . import vllm

TARGETS = ("vllm", "merged", "gguf", "ollama")


def served_name(params) -> str:
    return params.export.name or re.sub(r"[^A-Za-z0-9._-]+", "-", params.tracking.experiment).strip("-.") or "model"


def held_out_ids(params, tokenizer, count: int) -> list[list[int]]:
    """Token ids of the first `count` held-out prompts, rendered as training rendered them."""
    from ..evaluate.answers import prompt_text

    path = Path(params.data.prepared_dir) / "held_out_prompts.jsonl"
    if count == 0 or not path.is_file():
        return []
    prompts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:count]]
    return [tokenizer(prompt_text(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]


def export_merged(params, out: Path, log) -> dict:
    started = time.perf_counter()
    path = merging.merge(params, out / "merged", params.export.merged_dtype, log=log)
    record = {"target": "merged", "path": str(path), "dtype": params.export.merged_dtype, "bytes": size_of(path)}
    record.update(merging.loss_comparison(params, path))
    record["seconds"] = round(time.perf_counter() - started, 2)
    log(f"merged: held-out loss {record['merged_eval_loss']:.4f}, adapter {record['adapter_eval_loss']:.4f} "
        f"({record['merged_loss_change_pct']:+.2f}% after merging) -> {path}")
    return record


def export_gguf(params, out: Path, log) -> list[dict]:
    from . import checks, gguf

    model, tokenizer = merging.merged_model(params, "float32")
    ids = held_out_ids(params, tokenizer, params.export.check_prompts)
    name = served_name(params)
    records = []
    with atomic_dir(out / "gguf") as tmp:
        for kind in params.export.gguf_types:
            record = {"target": "gguf", **gguf.write_gguf(model, tokenizer, tmp / f"{name}-{kind}.gguf", kind, name)}
            problems = checks.file_problems(tmp / f"{name}-{kind}.gguf", tokenizer)
            if problems:
                raise gguf.GGUFError(f"{name}-{kind}.gguf failed its read-back: " + "; ".join(problems))
            record["checks"] = ["tensor names and blocks (gguf reader)", "tokenizer, chat template and eos"]
            if ids:
                agreement = checks.reader_agreement(tmp / f"{name}-{kind}.gguf", model, kind, ids)
                if not agreement["passed"]:
                    raise gguf.GGUFError(f"{name}-{kind}.gguf: transformers' GGUF loader disagrees with the merged model "
                                         f"({agreement['bar']} failed: {agreement})")
                record["reader"] = agreement
                record["checks"].append(f"transformers' GGUF loader: {agreement['bar']} on {len(ids)} held-out prompts")
            records.append(record)
            log(f"gguf: {name}-{kind}.gguf {record['bytes'] / 2**20:,.1f} MiB in {record['seconds']:.1f} s; "
                f"checks passed: {', '.join(record['checks'])}")
    for record in records:
        record["path"] = str(out / "gguf" / Path(record["path"]).name)
    f16 = next((r["path"] for r in records if r["type"] == "F16"), None)
    if f16:
        records[0]["quantize_command"] = gguf.quantize_command(Path(f16))
        log(f"K-quants with llama.cpp: {records[0]['quantize_command']}")
    return records


def export(params, targets: list[str] | None = None, log=print) -> list[dict]:
    """Write the targets (default: export.targets); returns their records (also in exports.json)."""
    targets = list(dict.fromkeys(targets or params.export.targets))
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise DataError(f"--target {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
    adapter_dir = merging.adapter_dir_of(params)
    out = Path(params.train.output_dir) / "export"
    out.mkdir(parents=True, exist_ok=True)
    name = served_name(params)
    records = []
    if "vllm" in targets:
        refused = vllm.problems(vllm.adapter_config(adapter_dir))
        if refused:
            for rule in refused:
                log(f"vllm: vLLM would refuse this adapter: {rule}")
            records.append({"target": "vllm", "refused": refused, "fallback": "merged",
                            "command": vllm.merged_serve_command((out / "merged").resolve(), name)})
            if "merged" not in targets:
                targets.append("merged")
        else:
            record = vllm.export_adapter(adapter_dir, out / "vllm", params.model.base, name)
            record["bytes"] = size_of(out / "vllm")
            records.append(record)
    if "merged" in targets:
        records.append(export_merged(params, out, log))
        if records[0]["target"] == "vllm" and records[0].get("refused"):
            log(f"vllm: serve the merged model instead: {records[0]['command']}")
    if "ollama" in targets and "gguf" not in targets:
        targets.append("gguf")  # the Modelfile points at a GGUF file
    if "gguf" in targets:
        records += export_gguf(params, out, log)
    if "ollama" in targets:
        from . import ollama

        gguf_file = next(r["path"] for r in records if r["target"] == "gguf")
        tokenizer = merging.loading.load_tokenizer(str(adapter_dir))
        records.append(ollama.write_modelfile(Path(gguf_file), tokenizer, params.data.max_length, name))
    for record in records:
        if record.get("command"):
            log(f"{record['target']}: {record['command']}")
    write_text_atomic(out / "exports.json", json.dumps(records, indent=2) + "\n")
    log_to_run(params, records, out / "exports.json")
    return records


def metrics_of(records: list[dict]) -> dict[str, float]:
    """The figures MLflow keeps: each export's size in MiB, the merged model's loss change."""
    metrics = {}
    for record in records:
        key = f"export_{record['target']}" + (f"_{record['type'].lower()}" if record["target"] == "gguf" else "")
        if "bytes" in record:
            metrics[f"{key}_mib"] = record["bytes"] / 2**20
        if record.get("refused"):
            metrics["export_vllm_refused"] = float(len(record["refused"]))
        for figure in ("adapter_eval_loss", "merged_eval_loss", "merged_loss_change_pct"):
            if figure in record:
                metrics[f"export_{figure}"] = record[figure]
        if "reader" in record:
            metrics[f"{key}_max_logit_diff"] = record["reader"]["max_logit_diff"]
            metrics[f"{key}_greedy_agreement"] = record["reader"]["greedy_agreement"]
    return metrics


def log_to_run(params, records: list[dict], manifest: Path) -> None:
    from ..tracking import log_to_training_run

    run_id = log_to_training_run(params, metrics_of(records), [manifest])
    if run_id is None:
        print(f"no MLflow run to add the exports to ({Path(params.train.output_dir) / 'mlflow_run.json'} missing)")
