"""CPU benchmark: this project's DPO step against TRL's DPOTrainer, same model, same pairs.

    rm -rf /tmp/b && python -m cookiecutter --no-input -o /tmp/b . && cd /tmp/b/support-assistant-fine-tune
    PYTHONPATH=src python <template>/benchmarks/dpo_cpu.py --package support_assistant_fine_tune

The model is the project's tiny test model (its tokenizer trained on the sample data); the data
is the sample preference set (`scripts/make_sample_data.py --preferences`), prepared once by our
`prepare` (pairs packed side by side) and given to TRL as the same records, which it tokenizes
itself. Both train LoRA r=16 on all linear layers, sigmoid DPO, beta 0.1, the same constant
learning rate, about the same pairs per step (TRL: `--pairs` pairs per batch; ours: as many
packed rows as hold that many pairs on average), for `--steps` steps after `--warmup`, one
thread each, one after the other in one process. Printed: steps/s and pairs/s of each, their
ratio, and each one's held-out preference accuracy and reward margin afterwards (validation
pairs, adapter-off reference), so that speed is compared at the quality it buys.
"""

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True, help="the baked project's package name")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    cli = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine: one thread is steadier than contended ones
    pkg = {name: importlib.import_module(f"{cli.package}.{name}") for name in
           ("cli", "config", "data", "tiny", "train", "train.objectives.preference", "model.loading")}
    work = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    subprocess.run([sys.executable, "scripts/make_sample_data.py", "--out", str(work / "sft.jsonl")], check=True, capture_output=True)
    subprocess.run([sys.executable, "scripts/make_sample_data.py", "--preferences", "--count", "400", "--out", str(work / "pairs.jsonl")],
                   check=True, capture_output=True)
    model_dir = pkg["tiny"].build_tiny_model(work / "tiny", work / "sft.jsonl")
    base_params = pkg["config"].load_params("params.yaml")
    overrides = [*pkg["cli"].smoke_overrides(base_params), f"model.base={model_dir}", f"data.path={work / 'pairs.jsonl'}",
                 f"data.prepared_dir={work / 'prepared'}", f"checkpoint.dir={work / 'ckpt'}", f"train.output_dir={work / 'out'}",
                 "train.objective=dpo", "lora.dropout=0", "lora.r=16", "lora.alpha=32", f"train.learning_rate={cli.learning_rate}",
                 "train.lr_schedule=constant", "train.warmup_steps=0", "data.num_proc=1"]
    params = pkg["config"].load_params("params.yaml", overrides)
    summary = pkg["data"].prepare(params, log=lambda *_: None)
    pairs_per_row = summary["train"]["pairs"] / summary["train"]["rows"]
    rows_per_step = max(1, round(cli.pairs / pairs_per_row))
    params = pkg["config"].load_params("params.yaml", [*overrides, f"train.global_batch={rows_per_step}",
                                                       f"train.micro_batch={rows_per_step}", f"train.max_steps={cli.warmup + cli.steps}"])
    held_out = pkg["data"].load_prepared(params.data.prepared_dir, "val")
    metrics = pkg["train.objectives.preference"].held_out_metrics
    cpu = torch.device("cpu")

    # Ours: the very setup / train_step that `train` runs.
    s = pkg["train"].setup(params)
    pairs = 0
    for step in range(cli.warmup + cli.steps):
        if step == cli.warmup:
            started = time.perf_counter()
        result = pkg["train"].train_step(s, step)
        if step >= cli.warmup:
            pairs += s.objective.items(s.rows, result.batch_rows)
    ours_s = time.perf_counter() - started
    peft = s.accelerator.unwrap_model(s.model)
    ours = {"steps_per_s": cli.steps / ours_s, "pairs_per_s": pairs / ours_s, "pairs_per_step": pairs / cli.steps,
            **metrics(peft, peft, held_out, "sigmoid", 0.1, 0.0, 8, cpu)}

    # TRL's DPOTrainer on the same records and model, the same adapter shape and learning rate.
    from accelerate.state import AcceleratorState
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    AcceleratorState._reset_state(reset_partial_state=True)
    records = [json.loads(line) for line in Path(params.data.path).read_text().splitlines()]
    train_positions = set(range(len(records))) - set(pkg["data"].validation_records(len(records), params.data.val_fraction,
                                                                                      params.data.seed).tolist())
    times = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    config = DPOConfig(output_dir=str(work / "trl"), beta=0.1, loss_type=["sigmoid"], per_device_train_batch_size=cli.pairs,
                       learning_rate=cli.learning_rate, lr_scheduler_type="constant", warmup_steps=0, max_steps=cli.warmup + cli.steps,
                       report_to=[], use_cpu=True, max_length=params.data.max_length, save_strategy="no", logging_strategy="no",
                       dataset_num_proc=None, dataloader_num_workers=0, seed=params.train.seed, bf16=False, fp16=False)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), args=config,
                         train_dataset=Dataset.from_list([records[i] for i in sorted(train_positions)]),
                         processing_class=AutoTokenizer.from_pretrained(model_dir),
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
                         callbacks=[StepTimes()])
    trainer.train()
    trl_s = times[-1] - times[cli.warmup - 1]
    trl = {"steps_per_s": cli.steps / trl_s, "pairs_per_s": cli.steps * cli.pairs / trl_s, "pairs_per_step": cli.pairs,
           **metrics(trainer.model, trainer.model, held_out, "sigmoid", 0.1, 0.0, 8, cpu)}
    print(json.dumps({"ours": ours, "trl": trl, "ratio_pairs_per_s": ours["pairs_per_s"] / trl["pairs_per_s"],
                      "ratio_steps_per_s": ours["steps_per_s"] / trl["steps_per_s"], "steps": cli.steps,
                      "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
