"""No quality regression: our trainer against the reference, Hugging Face Trainer + PEFT.

Both train the tiny model from the same LoRA initialisation on the same packed rows in the
same order with the same schedule, so the two loss curves must agree step by step, far
inside the difference that another seed makes. A change in the loss normalisation, the
accumulation, the schedule, clipping or the optimizer shows up here at once.
"""

from pathlib import Path

import torch

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.train import rows_for_step, train

STEPS = 20


def loss_curve(output_dir) -> list[float]:
    lines = (Path(output_dir) / "train_loss.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


def reference_curve(params) -> list[float]:
    """Hugging Face Trainer + PEFT, the recipe most fine-tuning scripts copy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    cfg = params.train
    rows = data.load_prepared(params.data.prepared_dir, "train")
    order = [i for step in range(STEPS) for i in rows_for_step(step, cfg.global_batch, len(rows["input_ids"]), cfg.seed)]

    class OurRowOrder(torch.utils.data.Dataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, k):
            return {key: rows[key][order[k]].long() for key in ("input_ids", "labels", "position_ids")}

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    set_seed(cfg.seed)  # as our trainer does before loading: the same LoRA initialisation
    base = AutoModelForCausalLM.from_pretrained(params.model.base, dtype=torch.float32, attn_implementation="sdpa")
    base.config.use_cache = False
    lora = LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    args = TrainingArguments(
        output_dir=str(params.train.output_dir) + "-reference", max_steps=STEPS,
        per_device_train_batch_size=cfg.micro_batch, gradient_accumulation_steps=cfg.global_batch // cfg.micro_batch,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, optim="adamw_torch", seed=cfg.seed,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
    )
    trainer = InOrder(model=get_peft_model(base, lora), args=args, train_dataset=OurRowOrder())
    trainer.train()
    return [record["loss"] for record in trainer.state.log_history if "loss" in record]


def test_loss_curve_matches_hf_trainer_with_peft_far_inside_seed_noise(make_params, tmp_path):
    common = [f"train.max_steps={STEPS}", "train.log_every_steps=1", "lora.dropout=0"]
    ours = make_params(*common)
    data.prepare(ours, log=lambda *_: None)
    train(ours, log=lambda *_: None)
    curve = loss_curve(ours.train.output_dir)

    reference = reference_curve(ours)
    assert len(reference) == len(curve) == STEPS
    largest_gap = max(abs(a - b) for a, b in zip(curve, reference, strict=True))

    other_seed = make_params(*common, "train.seed=1", f"train.output_dir={tmp_path / 'seed1'}", f"checkpoint.dir={tmp_path / 'ck1'}")
    train(other_seed, log=lambda *_: None)
    seed_noise = sum(abs(a - b) for a, b in zip(curve, loss_curve(tmp_path / "seed1"), strict=True)) / STEPS

    assert curve[-1] < curve[0] - 0.5  # it learned
    assert seed_noise > 0.01
    assert largest_gap < 1e-4, (largest_gap, curve, reference)
