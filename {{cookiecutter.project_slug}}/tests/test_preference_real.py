"""Preference training with the real model (SmolLM2-135M-Instruct): TRL agrees, and DPO learns.

1. Side by side with TRL's DPOTrainer (the reference implementation most users know), on the
   same pairs from the same weights (a LoRA adapter with random B matrices, so that the policy
   differs from the reference): the per-pair DPO loss agrees to 1e-5, both sides in float64 on
   the CPU. Why float64: in float32 the two sum the log-probabilities of ~200 tokens in different
   orders (packed rows against padded pairs, a full log-softmax against TRL's chunked one), which
   moved losses near 0.8 by 1.0e-5 to 2.2e-5 depending on the thread count. In float64 what is
   left is TRL's own: its fused LM-head kernel (trl/kernels/chunked_logprob.py) keeps the running
   max and sum of exponentials of its chunked log-softmax in float32 whatever the model's dtype,
   about 1e-6 on these losses. A wrong mask, reference or beta moves a loss by 1e-2 or more. TRL
   tokenizes the records itself; the pairs are matched by their chosen answer.
2. A short DPO run raises the held-out preference accuracy (validation pairs never trained on)
   above its starting value, and the held-out reward margin above 0.
"""

import json
import subprocess
import sys

import pytest
import torch

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.data.pairs import encode_all, pack_pairs
from {{ cookiecutter.package_name }}.data.shapes import normalise
from {{ cookiecutter.package_name }}.model import loading, loss
from {{ cookiecutter.package_name }}.model.batch import to_device
from {{ cookiecutter.package_name }}.model.logps import sequence_logps
from {{ cookiecutter.package_name }}.train import train
from {{ cookiecutter.package_name }}.train.objectives.preference import adapter_off_logps, held_out_metrics, pair_terms

from conftest import PROJECT, smoke_params

BETA = 0.1


@pytest.fixture(scope="module")
def preference_records(tmp_path_factory):
    path = tmp_path_factory.mktemp("real-preference") / "pairs.jsonl"
    subprocess.run([sys.executable, str(PROJECT / "scripts/make_sample_data.py"), "--preferences", "--count", "80", "--seed", "1",
                    "--out", str(path)], check=True, capture_output=True)
    return path, [json.loads(line) for line in path.read_text().splitlines()]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def test_per_pair_dpo_loss_equals_trls_dpo_trainer(real_model, preference_records, tmp_path):
    dtype, tolerance = torch.float64, 1e-5
    from datasets import Dataset
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    records = sorted(preference_records[1], key=lambda r: len(json.dumps(r)))[:6]  # the shortest: a fast test
    tokenizer = AutoTokenizer.from_pretrained(real_model)
    # Eager attention on both sides: the same attention arithmetic for packed and padded rows (the
    # fused kernels sum in another order per layout, which moves a 200-token log-probability by ~1e-3).
    base = AutoModelForCausalLM.from_pretrained(real_model, dtype=dtype, attn_implementation="eager")
    # The trainer's forward (loss.py): log-probabilities over chunks of 97 tokens, never the whole logits.
    assert loss.use_chunked_loss(base, chunk=97)
    ours_model = get_peft_model(base, lora_config()).to(dtype)
    generator = torch.Generator().manual_seed(0)
    for name, parameter in ours_model.named_parameters():
        if "lora_B" in name:
            parameter.data = (torch.randn(parameter.shape, generator=generator) * 0.02).to(dtype)
    adapter = get_peft_model_state_dict(ours_model)
    ours_model.eval()

    # Ours: the records through our prepare path, packed side by side, losses per pair.
    examples = [(f"pairs.jsonl:{i + 1}", normalise(r, "auto")) for i, r in enumerate(records)]
    encoded, _ = encode_all(examples, tokenizer, str(real_model))
    rows, _ = pack_pairs(encoded, 1024, tokenizer.pad_token_id)
    rows = {key: torch.from_numpy(value) for key, value in rows.items()}
    batch = to_device(rows, list(range(len(rows["input_ids"]))), torch.device("cpu"))
    with torch.no_grad():
        logps, counts = sequence_logps(ours_model, batch)
        reference = adapter_off_logps(ours_model, ours_model, batch, logps.shape[1])
    losses = pair_terms(logps, counts, reference, "sigmoid", BETA, 0.0)[0].tolist()
    # The packed order, as chosen ids, to match each loss with its record.
    chosen_ids = [tuple(c_ids) for (c_ids, _), _ in encoded]
    order = []
    for ids, positions in zip(batch["input_ids"], batch["position_ids"], strict=True):
        starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [len(ids)]
        sequences = [tuple(ids[a:b].tolist()) for a, b in zip(starts, starts[1:], strict=False)]
        order += [chosen_ids.index(s) for s in sequences[0::2] if s in chosen_ids]
    ours = dict(zip(order, losses, strict=True))

    # TRL: its own tokenization and collation, the same adapter weights, one pair per batch.
    config = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, loss_type=["sigmoid"], per_device_train_batch_size=1,
                       report_to=[], use_cpu=True, max_length=None, dataset_num_proc=None, bf16=False, fp16=False)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(real_model, dtype=dtype, attn_implementation="eager"), args=config,
                         train_dataset=Dataset.from_list(records), processing_class=tokenizer, peft_config=lora_config())
    trainer.model.to(dtype)
    set_peft_model_state_dict(trainer.model, adapter)
    trainer.model.eval()
    theirs = {}
    for i in range(len(records)):
        inputs = trainer.data_collator([trainer.train_dataset[i]])
        with torch.no_grad():
            theirs[i] = float(trainer.compute_loss(trainer.model, inputs))
        # The same tokens: TRL's prompt + chosen is our chosen sequence.
        example = trainer.train_dataset[i]
        assert tuple(example["prompt_ids"] + example["chosen_ids"]) == chosen_ids[i]

    assert sorted(ours) == sorted(theirs) == list(range(len(records)))
    for i in range(len(records)):
        print(f"{dtype} pair {i}: ours {ours[i]:.10f}, TRL {theirs[i]:.10f}, difference {abs(ours[i] - theirs[i]):.1e}")
        assert ours[i] == pytest.approx(theirs[i], abs=tolerance), f"pair {i}: ours {ours[i]}, TRL {theirs[i]}"
    assert len({round(v, 4) for v in theirs.values()}) > 1 and all(abs(v - 0.6931) > 1e-4 for v in theirs.values())


def test_a_short_dpo_run_raises_held_out_preference_accuracy_and_margin(real_model, preference_records, tmp_path):
    # The shortest pairs, in rows of 384 tokens, two rows a step: a few CPU minutes for the 135M model.
    _, records = preference_records
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sorted(records, key=lambda r: len(json.dumps(r)))[:40]))
    params = smoke_params(tmp_path, real_model, path, f"data.path={path}", "train.objective=dpo", "model.dtype=float32",
                          "data.max_length=384", "train.global_batch=2", "train.micro_batch=2", "train.max_steps=6",
                          "train.learning_rate=1e-3", "train.warmup_steps=0", "train.lr_schedule=constant", "train.log_every_steps=2",
                          "lora.dropout=0", "data.val_fraction=0.25", "eval.generations=0", "tracking.system_metrics=false")
    data.prepare(params, log=lambda *_: None)
    held_out = data.load_prepared(params.data.prepared_dir, "val")
    assert len(held_out["input_ids"]) >= 6  # rows of one or two pairs
    base = loading.add_adapter(loading.load_base_model(params, torch.device("cpu")), params)
    # Before training the policy is the reference: every reward is 0 (checked on two rows; the rest only cost time).
    first_rows = {key: value[:2] for key, value in held_out.items()}
    before = held_out_metrics(base, base, first_rows, "sigmoid", params.train.beta, 0.0, 4, torch.device("cpu"))
    assert before["preference_accuracy"] == 0.0 and before["reward_margin"] == 0.0

    adapter_dir = train(params, resume="never", log=lambda *_: None)
    trained = loading.load_trained(params, adapter_dir, torch.device("cpu"))
    after = held_out_metrics(trained, trained, held_out, "sigmoid", params.train.beta, 0.0, 4, torch.device("cpu"))
    assert after["pairs"] >= 6
    assert after["preference_accuracy"] > max(before["preference_accuracy"], 0.75), after
    assert after["reward_margin"] > 0, after
    assert after["preference_loss"] < 0.6931, after
