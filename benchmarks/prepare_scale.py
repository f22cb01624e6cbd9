"""How fast and how lean is `prepare`? The generated project's stage against TRL's SFT
dataset preparation, side by side in one run, on the same file and the same tokenizer.

    python benchmarks/prepare_scale.py --tokenizer /path/to/SmolLM2-135M-Instruct --count 100000 1000000

For each count: bakes the default project, writes that many support conversations with its
own scripts/make_sample_data.py (the sample data's length distribution), then runs, each in
its own process tree:
  ours                `<package> prepare` (data.num_proc = --num-proc): tokenize, split,
                      pack best-fit decreasing into rows of --max-length, write.
  trl_assistant_only  `trl.SFTTrainer(...)` construction, which prepares its dataset:
                      `datasets.load_dataset("json")`, `apply_chat_template(...,
                      return_assistant_tokens_mask=True)` per conversation, labels, then
                      `pack_dataset(strategy="bfd")`; SFTConfig(assistant_only_loss=True,
                      packing=True, max_length, dataset_num_proc). TRL needs `{% generation %}`
                      markers for assistant-only loss and has no training template for
                      SmolLM2's, so the tokenizer gets its own template with the markers added
                      (the same text, the same trained tokens as ours: each answer + <|im_end|>\\n).
  trl_all_tokens      the same with the tokenizer's template unchanged and
                      assistant_only_loss=False (every token trained: less work than ours).
  ours_pack_only      the stage after tokenization alone (split, best-fit plan, rows built and
                      written), as `prepare` runs it, on a token store of `count` examples whose
                      lengths are resampled from 2,000 conversations of the file encoded for
                      real (random token ids): its time and memory at sizes where tokenizing
                      on a shared machine would take too long.
Measured: wall seconds (process start to exit), CPU seconds of the whole process tree
(user + system), peak RSS of the whole process tree (sum over its processes, sampled every
0.1 s: shared pages count once per process, so this is an upper bound), and packing
efficiency (real tokens / row slots). "per core" = conversations / (wall s x processes);
"per CPU-s" = conversations / CPU seconds, which other load on the machine disturbs less.
JSON lines go to --out; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]

# SmolLM2-Instruct's chat template with {% generation %} markers around what is trained.
MARKED_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def run_trl(args) -> None:
    """In its own process: TRL's SFT dataset preparation, then its figures as one JSON line."""
    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    assistant_only = args.trl == "trl_assistant_only"
    if assistant_only:
        tokenizer.chat_template = MARKED_TEMPLATE
    # A one-layer model: SFTTrainer needs one; building it takes well under a second.
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    dataset = datasets.load_dataset("json", data_files=args.data, split="train", cache_dir=args.cache_dir)
    config = SFTConfig(output_dir=args.cache_dir, packing=True, packing_strategy="bfd", max_length=args.max_length,
                       assistant_only_loss=assistant_only, dataset_num_proc=args.num_proc, report_to=[], use_cpu=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    seconds = time.perf_counter() - started
    packed = trainer.train_dataset
    tokens = pc.sum(pc.list_value_length(packed.data.column("input_ids"))).as_py()
    trained = sum(sum(label != -100 for label in row) for row in packed.select(range(min(len(packed), 200)))["labels"])
    print(json.dumps({"rows": len(packed), "tokens": tokens, "seconds_in_process": round(seconds, 2),
                      "packing_efficiency": round(tokens / (len(packed) * args.max_length), 4),
                      "trained_tokens_first_200_rows": trained}))


def run_pack_only(args) -> None:
    """In its own process: split, pack and write `args.pack_only` synthetic examples."""
    import importlib
    import itertools
    from types import SimpleNamespace

    import numpy as np
    from transformers import AutoTokenizer

    data = importlib.import_module(f"{args.package}.data")
    stage = importlib.import_module(f"{args.package}.data.prepare")
    store = importlib.import_module(f"{args.package}.data.store")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    data.ensure_chat_template(tokenizer)
    sample = []
    for _, example in itertools.islice(data.read_examples(args.data, "chat"), 2000):
        ids, labels = data.encode(tokenizer, example, "assistant", template_source=args.tokenizer)
        sample.append((len(ids), sum(label != data.IGNORE for label in labels[1:])))
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(sample), args.pack_only)
    lengths = np.array([length for length, _ in sample], dtype=np.int32)[pick]
    trained = np.array([count for _, count in sample], dtype=np.int32)[pick]
    started = time.perf_counter()
    folder = Path(args.cache_dir)
    tokens = store.TokenStore(folder / ".tokens")
    for first in range(0, len(lengths), 65536):
        chunk = lengths[first : first + 65536]
        ids = rng.integers(0, len(tokenizer), int(chunk.sum()), dtype=np.int32)
        tokens.append(ids, ids, chunk)
    stored, offsets = tokens.close()
    cfg = SimpleNamespace(val_fraction=0.1, seed=0, max_length=args.max_length, path=args.data, num_proc=args.num_proc)
    splits, _ = stage.split_and_pack(folder, tokens, stored, offsets, trained, cfg, tokenizer.pad_token_id or 0, log=lambda *_: None)
    rows = sum(s["rows"] for s in splits.values())
    total = sum(s["tokens"] for s in splits.values())
    print(json.dumps({"rows": rows, "tokens": total, "seconds_in_process": round(time.perf_counter() - started, 2),
                      "packing_efficiency": round(total / (rows * args.max_length), 4)}))


def measure(command: list[str], env: dict, cwd: Path) -> dict:
    """Run `command`; wall time, CPU seconds and peak RSS of its whole process tree."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak[0] = max(peak[0], total)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_gb": round(peak[0] / 1e9, 3),
            "stdout": stdout, "stderr": stderr}


def bake(template: Path, folder: Path) -> tuple[Path, str]:
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(folder), str(template)], check=True,
                   stdout=subprocess.DEVNULL)
    (project,) = folder.iterdir()
    (package,) = [p.name for p in (project / "src").iterdir() if (p / "__init__.py").is_file()]
    return project, package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="a model directory with the SmolLM2-Instruct tokenizer")
    parser.add_argument("--count", type=int, nargs="+", default=[100_000], help="conversations per run")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count(), help="processes for both (default: every core)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--cases", nargs="+", default=["ours", "trl_assistant_only", "trl_all_tokens"])
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a temporary one); generated data files there are reused")
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="the template to bake (default: this checkout)")
    parser.add_argument("--out", type=Path, default=TEMPLATE / "benchmarks/out/prepare_scale.jsonl")
    # Internal: one TRL case, in its own process.
    parser.add_argument("--trl", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--pack-only", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--package", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl:
        return run_trl(args)
    if args.pack_only:
        return run_pack_only(args)

    work = Path(args.work or tempfile.mkdtemp(prefix="prepare-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    project, package = bake(args.template, work / "bake")
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for count in args.count:
        data = work / f"support-{count}.jsonl"
        if not data.is_file():
            subprocess.run([sys.executable, str(project / "scripts/make_sample_data.py"), "--out", str(data), "--count", str(count)],
                           check=True, stdout=subprocess.DEVNULL)
        for case in args.cases:
            if case == "ours":
                prepared = work / f"prepared-{count}"
                command = [sys.executable, "-m", package, "prepare", "--set", f"model.base={args.tokenizer}",
                           "--set", f"data.path={data}", "--set", f"data.prepared_dir={prepared}",
                           "--set", f"data.max_length={args.max_length}", "--set", f"data.num_proc={args.num_proc}"]
                result = measure(command, env, project)
                summary = json.loads((prepared / "summary.json").read_text())
                rows = summary["train"]["rows"] + summary["val"]["rows"]
                tokens = summary["train"]["tokens"] + summary["val"]["tokens"]
                extra = {"rows": rows, "tokens": tokens, "packing_efficiency": round(tokens / (rows * args.max_length), 4),
                         "trained_tokens": summary["train"]["trained_tokens"] + summary["val"]["trained_tokens"]}
            elif case == "ours_pack_only":
                cache = work / f"pack-{count}"
                command = [sys.executable, __file__, "--pack-only", str(count), "--package", package, "--tokenizer", args.tokenizer,
                           "--data", str(data), "--cache-dir", str(cache), "--max-length", str(args.max_length),
                           "--num-proc", str(args.num_proc)]
                result = measure(command, env, project)
                extra = json.loads(result["stdout"].strip().splitlines()[-1])
                shutil.rmtree(cache, ignore_errors=True)
            else:
                cache = work / f"cache-{case}-{count}"
                command = [sys.executable, __file__, "--trl", case, "--tokenizer", args.tokenizer, "--data", str(data),
                           "--cache-dir", str(cache), "--num-proc", str(args.num_proc), "--max-length", str(args.max_length)]
                result = measure(command, env, project)
                extra = json.loads(result["stdout"].strip().splitlines()[-1])
                shutil.rmtree(cache, ignore_errors=True)
            record = {"case": case, "conversations": count, "template": str(args.template), "num_proc": args.num_proc, "cores": os.cpu_count(),
                      **{k: v for k, v in result.items() if k not in ("stdout", "stderr")}, **extra}
            record["conversations_per_s"] = round(count / record["wall_s"], 1)
            record["per_core"] = round(count / (record["wall_s"] * args.num_proc), 1)
            record["per_cpu_s"] = round(count / record["cpu_s"], 1)
            records.append(record)
            with args.out.open("a") as out:
                out.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)

    print("\n| conversations | case | wall s | conv/s | per core | per CPU-s | peak RSS (tree) | packing |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in records:
        print(f"| {r['conversations']:,} | {r['case']} | {r['wall_s']:.0f} | {r['conversations_per_s']:,.0f} | {r['per_core']:,.0f} "
              f"| {r['per_cpu_s']:,.0f} | {r['peak_rss_gb']:.2f} GB | {r['packing_efficiency']:.1%} |")
    for count in args.count:
        by_case = {r["case"]: r for r in records if r["conversations"] == count}
        if "ours" in by_case:
            for case in ("trl_assistant_only", "trl_all_tokens"):
                if case in by_case:
                    print(f"{count:,}: ours / {case}: per core {by_case['ours']['per_core'] / by_case[case]['per_core']:.2f}x, "
                          f"per CPU-s {by_case['ours']['per_cpu_s'] / by_case[case]['per_cpu_s']:.2f}x")


if __name__ == "__main__":
    main()
