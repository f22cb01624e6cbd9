"""Recipe features on the tiny model: QLoRA, DoRA, 8-bit AdamW, DDP, FSDP, merge, generations."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.evaluate import evaluate
from {{ cookiecutter.package_name }}.export.merged import merge
from {{ cookiecutter.package_name }}.model import flops, loading
from {{ cookiecutter.package_name }}.model.fit import choose_micro_batch, largest_that_fits
from {{ cookiecutter.package_name }}.train import train

from conftest import PROJECT, cli_overrides

quiet = {"log": lambda *_: None}


def losses(params):
    lines = open(f"{params.train.output_dir}/train_loss.csv").read().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


def test_qlora_trains_a_4bit_base_on_cpu(make_params):
    params = make_params("model.method=qlora", "train.max_steps=20", "train.log_every_steps=5")
    data.prepare(params, **quiet)
    adapter = train(params, **quiet)
    curve = losses(params)
    assert curve[-1] < curve[0] - 0.2, curve
    model = loading.load_trained(params, adapter, torch.device("cpu"))
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())


def test_dora_and_8bit_adamw_train(make_params):
    params = make_params("model.method=dora", "train.optimizer=adamw_8bit", "train.max_steps=20", "train.log_every_steps=5")
    data.prepare(params, **quiet)
    adapter = train(params, **quiet)
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True
    curve = losses(params)
    assert curve[-1] < curve[0] - 0.2, curve


def run_two_processes(config: str, *args: str):
    """`accelerate launch` with one of the project's configs, two CPU processes (gloo).
    FSDP goes through tests/fsdp_on_cpu.py: accelerate enables it only on GPUs."""
    import subprocess

    entry = ["tests/fsdp_on_cpu.py"] if config == "fsdp" else ["-m", "{{ cookiecutter.package_name }}"]
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}.yaml",
         "--num_processes", "2", *entry, "train", *args],
        cwd=PROJECT, capture_output=True, text=True, timeout=600,
    )


def assert_same_adapter(first, second, atol=2e-5):
    one, two = load_file(f"{first}/adapter_model.safetensors"), load_file(f"{second}/adapter_model.safetensors")
    assert one.keys() == two.keys()
    moved = 0
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=atol, rtol=1e-4)
        moved += int("lora_B" in key and one[key].abs().sum() > 0)
    assert moved > 0  # the adapters did train (lora_B starts at zero)


SAME_UPDATE = ["train.max_steps=4", "train.micro_batch=4", "train.global_batch=8", "lora.dropout=0", "train.log_every_steps=2"]


def test_two_process_ddp_matches_one_process(make_params, tmp_path):
    """Same global batch on 1 process (2 x accumulation) and 2 processes (gloo): same adapter."""
    single = make_params(*SAME_UPDATE)
    data.prepare(single, **quiet)
    train(single, **quiet)

    # micro_batch=auto: the processes agree on one split (an all-reduce) before training.
    result = run_two_processes("ddp", *cli_overrides(single, **{"train.micro_batch": "auto", "train.output_dir": tmp_path / "ddp"}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 x 1 accumulation x 2 processes" in result.stdout + result.stderr
    assert_same_adapter(f"{single.train.output_dir}/adapter", tmp_path / "ddp/adapter")


def test_fsdp_shards_trains_like_one_process_and_its_checkpoints_resume_anywhere(make_params, tmp_path):
    """FSDP over 2 CPU processes: the same adapter as 1 process; its checkpoints (gathered
    whole) resume under FSDP and in a single process to the same result."""
    single = make_params(*SAME_UPDATE, "checkpoint.every_steps=2", "checkpoint.keep=2")
    data.prepare(single, **quiet)
    train(single, **quiet)
    expected = f"{single.train.output_dir}/adapter"

    sharded = cli_overrides(single, **{"train.output_dir": tmp_path / "fsdp", "checkpoint.dir": tmp_path / "fsdp-checkpoints"})
    result = run_two_processes("fsdp", *sharded)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2x cpu (FSDP)" in result.stdout + result.stderr
    assert_same_adapter(expected, tmp_path / "fsdp/adapter")

    # Resume from the half-way checkpoint written by FSDP: under FSDP, and in one process.
    [halfway] = (tmp_path / "fsdp-checkpoints").glob("*/step-00000002")
    elsewhere = {"checkpoint.dir": tmp_path / "elsewhere"}
    result = run_two_processes("fsdp", *cli_overrides(single, **elsewhere, **{"train.output_dir": tmp_path / "fsdp-resumed"}), "--resume", str(halfway))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {halfway} (step 2)" in result.stdout
    assert_same_adapter(expected, tmp_path / "fsdp-resumed/adapter")

    one_process = make_params(*SAME_UPDATE, f"train.output_dir={tmp_path / 'one-resumed'}", f"checkpoint.dir={tmp_path / 'elsewhere-1'}")
    messages = []
    train(one_process, resume=str(halfway), log=messages.append)
    assert any(m.startswith(f"resuming from {halfway}") for m in messages)
    assert_same_adapter(expected, tmp_path / "one-resumed/adapter")


def test_fsdp_in_bf16_mixed_precision_trains_like_one_process(make_params, tmp_path):
    """The GPU setting: a bf16 base under accelerate's FSDP mixed precision (fp32 adapter
    master weights). Same update as one process up to bf16 rounding."""
    single = make_params(*SAME_UPDATE, "model.dtype=bfloat16")
    data.prepare(single, **quiet)
    train(single, **quiet)
    result = run_two_processes("fsdp", *cli_overrides(single, **{"train.output_dir": tmp_path / "fsdp"}))
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = load_file(tmp_path / "fsdp/adapter/adapter_model.safetensors")
    assert {w.dtype for w in adapter.values()} == {torch.float32}
    # What training changed (lora_B starts at zero) agrees to within bf16 rounding.
    one = load_file(f"{single.train.output_dir}/adapter/adapter_model.safetensors")
    learned = [key for key in one if "lora_B" in key]
    gap = sum(float((one[k] - adapter[k]).norm() ** 2) for k in learned) ** 0.5
    size = sum(float(one[k].norm() ** 2) for k in learned) ** 0.5
    assert size > 0.1 and gap / size < 0.03, (gap, size)


def test_ddp_refuses_a_batch_it_cannot_split(make_params):
    """Refusals come before any model is loaded, as one line naming the setting, exit code 2
    (accelerate's launcher then reports the failed processes with a traceback of its own)."""
    params = make_params()
    result = run_two_processes("ddp", *cli_overrides(params, **{"train.global_batch": 7, "train.micro_batch": "auto"}))
    assert "error: train.global_batch=7 is not a multiple of the 2 processes" in result.stderr and "exitcode  : 2" in result.stderr
    assert "{{ cookiecutter.package_name }}/" not in result.stderr  # no traceback through our code


@pytest.mark.parametrize("method, optimizer", [("qlora", "adamw_8bit"), ("dora", "paged_adamw_8bit")])
def test_every_method_and_optimizer_resumes_to_the_same_adapter(make_params, tmp_path, method, optimizer):
    """Checkpoints hold what each method trains (LoRA on a 4-bit base, DoRA's magnitudes) and
    each optimizer's state (bitsandbytes' 8-bit ones too): resuming half-way changes nothing."""
    common = [*SAME_UPDATE, f"model.method={method}", f"train.optimizer={optimizer}", "checkpoint.every_steps=2", "checkpoint.keep=2"]
    whole = make_params(*common)
    data.prepare(whole, **quiet)
    train(whole, **quiet)
    [halfway] = Path(whole.checkpoint.dir).glob("*/step-00000002")
    resumed = make_params(*common, f"train.output_dir={tmp_path / 'resumed'}", f"checkpoint.dir={tmp_path / 'elsewhere'}")
    train(resumed, resume=str(halfway), **quiet)
    assert_same_adapter(f"{whole.train.output_dir}/adapter", tmp_path / "resumed/adapter", atol=0)


def test_compiled_layers_continue_an_eager_run_to_the_same_adapter(make_params, tmp_path):
    """train.compile=true: the decoder layers really run compiled, their updates are eager's
    (up to fused rounding), and checkpoints are interchangeable with an eager run's."""
    from torch._dynamo.utils import counters

    common = [*SAME_UPDATE, "checkpoint.every_steps=2", "checkpoint.keep=2"]
    eager = make_params(*common)
    data.prepare(eager, **quiet)
    train(eager, **quiet)
    [halfway] = Path(eager.checkpoint.dir).glob("*/step-00000002")
    counters.clear()
    compiled = make_params(*common, "train.compile=true", f"train.output_dir={tmp_path / 'compiled'}")
    train(compiled, resume=str(halfway), **quiet)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo captured the layers
    assert_same_adapter(f"{eager.train.output_dir}/adapter", tmp_path / "compiled/adapter", atol=1e-5)


def test_merged_model_gives_the_adapter_logits_and_generations_are_saved(make_params, tmp_path):
    params = make_params("train.max_steps=10", "eval.generations=3", "eval.max_new_tokens=8")
    data.prepare(params, **quiet)
    adapter = train(params, **quiet)
    evaluate(params, **quiet)
    generations = [json.loads(line) for line in (tmp_path / "outputs/generations.jsonl").read_text().splitlines()]
    assert len(generations) == 3 and all(isinstance(g["generated"], str) and g["reference"] for g in generations)

    merged_dir = merge(params, tmp_path / "merged", dtype="float32", **quiet)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with_adapter = loading.load_trained(params, adapter, torch.device("cpu"))
    ids = data.load_prepared(params.data.prepared_dir, "val")["input_ids"][:2].long()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
        # The adapter changed the model: the merge is not a no-op.
        base = loading.load_base_model(params, torch.device("cpu"))
        assert (base(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max() > 1e-3


def test_micro_batch_auto_on_cpu_keeps_the_global_batch(make_params):
    params = make_params("train.micro_batch=auto", "train.global_batch=12")
    cpu = torch.device("cpu")
    assert choose_micro_batch(None, None, params, per_process=12, device=cpu, sharded=False) == (4, 0, False)
    assert choose_micro_batch(None, None, params, per_process=6, device=cpu, sharded=False) == (3, 0, False)
    assert choose_micro_batch(None, None, params, per_process=6, device=cpu, sharded=True) == (1, 0, False)


def test_the_micro_batch_probe_backs_off_and_checkpoints_as_few_layers_as_will_do(make_params):
    """The GPU probe, run on the real tiny model (2 layers): forward + backward per candidate.
    The GPU's memory limit is played by a hook that raises CUDA's out-of-memory error above a
    number of rows, which grows with the number of checkpointed layers; a real limit needs a GPU."""
    params = make_params()
    data.prepare(params, **quiet)
    rows = data.load_prepared(params.data.prepared_dir, "train")
    cpu = torch.device("cpu")

    def probe(most_rows: dict, checkpointing="auto", candidates=(8, 4, 2, 1), offload=False):
        """most_rows: checkpointed layers (\"offload\": all, inputs in host RAM) -> the most rows that fit."""
        model = loading.add_adapter(loading.load_base_model(params, cpu), params)
        tried = []

        def memory_limit(module, args, kwargs):
            n = kwargs["input_ids"].shape[0]
            layers = loading.decoder_layers(model)
            checkpointed = sum(layer.gradient_checkpointing for layer in layers)
            if any(getattr(layer._gradient_checkpointing_func, "offloads", False) for layer in layers if checkpointed):
                checkpointed = "offload"
            assert model.training  # the probe measures what training keeps (eval mode checkpoints nothing)
            tried.append((n, checkpointed))
            if n > most_rows[checkpointed]:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

        model.base_model.model.model.register_forward_pre_hook(memory_limit, with_kwargs=True)
        model.eval()
        choice = largest_that_fits(model, rows, list(candidates), checkpointing, cpu, offload=offload)
        assert all(p.grad is None for p in model.parameters())  # the probe leaves no gradients behind
        return choice, tried

    no_checkpointing = [(8, 0), (4, 0), (2, 0), (1, 0)]
    assert probe({0: 8, 1: 8, 2: 8}) == ((8, 0, False), [(8, 0)])
    assert probe({0: 3, 1: 8, 2: 8}) == ((2, 0, False), no_checkpointing[:3])
    # Recomputing costs time: checkpointing only when not even one row fits without it, and
    # one row with one layer of two checkpointed beats four rows with both.
    assert probe({0: 0, 1: 1, 2: 4}) == ((1, 1, False), [*no_checkpointing, (1, 1)])
    assert probe({0: 0, 1: 0, 2: 4}) == ((4, 2, False), [*no_checkpointing, (1, 1), (8, 2), (4, 2)])
    assert probe({0: 8, 1: 8, 2: 2}, checkpointing=True) == ((2, 2, False), [(8, 2), (4, 2), (2, 2)])
    # Host offloading only once checkpointing every layer does not fit, largest micro-batch first.
    everything = [(8, 2), (4, 2), (2, 2), (1, 2)]
    assert probe({0: 0, 1: 0, 2: 0, "offload": 2}, offload="auto") == (
        (2, 2, True), [*no_checkpointing, (1, 1), *everything, (8, "offload"), (4, "offload"), (2, "offload")])
    assert probe({0: 0, 1: 0, 2: 0, "offload": 8}, checkpointing=True, offload=True) == ((8, 2, True), [(8, "offload")])
    with pytest.raises(ConfigError, match="not even one row of data.max_length=512 tokens fits in GPU memory with activations in host RAM"):
        probe({0: 0, 1: 0, 2: 0, "offload": 0}, offload="auto")
    with pytest.raises(ConfigError, match="without gradient checkpointing: lower data.max_length, set train.gradient_checkpointing=auto"):
        probe({0: 0, 1: 4, 2: 4}, checkpointing=False)
    with pytest.raises(ConfigError, match="not even one row of data.max_length=512 tokens fits in GPU memory: lower"):
        probe({0: 0, 1: 0, 2: 0})
    # A micro_batch that is set, with checkpointing auto: as few checkpointed layers as it needs.
    assert probe({0: 1, 1: 2, 2: 4}, candidates=[2]) == ((2, 1, False), [(2, 0), (2, 1)])
    with pytest.raises(ConfigError, match="not even train.micro_batch=2 rows .* lower train.micro_batch or data.max_length"):
        probe({0: 1, 1: 1, 2: 1}, candidates=[2])


def test_checkpointing_some_layers_changes_memory_not_the_update(make_params):
    """Checkpointed layers keep less for backward and recompute it there: the gradients are the same."""
    params = make_params("lora.dropout=0")
    data.prepare(params, **quiet)
    rows = data.load_prepared(params.data.prepared_dir, "train")
    batch = {key: rows[key][:2].long() for key in ("input_ids", "labels", "position_ids")}
    gradients, kept_bytes = [], []
    for checkpointed in (0, 1, 2):
        torch.manual_seed(0)
        model = loading.add_adapter(loading.load_base_model(params, torch.device("cpu")), params)
        loading.checkpoint_layers(model, checkpointed)
        assert [layer.gradient_checkpointing for layer in loading.decoder_layers(model)] == [i < checkpointed for i in range(2)]
        model.train()
        kept = []  # what autograd keeps for backward, outside the checkpointed layers

        def keep(tensor, kept=kept):
            kept.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        kept_bytes.append(sum(kept))
        gradients.append({name: p.grad for name, p in model.named_parameters() if p.requires_grad})
    assert kept_bytes[0] > kept_bytes[1] > kept_bytes[2], kept_bytes
    for other in gradients[1:]:
        for name, grad in gradients[0].items():
            torch.testing.assert_close(other[name], grad, msg=name)


def test_liger_kernels_are_never_claimed_where_they_cannot_run(make_params):
    model = loading.load_base_model(make_params(), torch.device("cpu"))
    assert loading.apply_liger_kernels(model, "auto", torch.device("cpu")) is False
    assert loading.apply_liger_kernels(model, False, torch.device("cuda")) is False
    with pytest.raises(ConfigError, match="train.liger_kernels=true: Liger's Triton kernels need a GPU"):
        loading.apply_liger_kernels(model, True, torch.device("cpu"))


def test_flops_per_token_follow_the_lora_convention():
    # 4N for a frozen base, plus causal attention 6 * layers * hidden * context.
    assert flops.flops_per_token(n_matmul=1000, layers=2, hidden=8, context=10) == 4000 + 960
    assert flops.peak_flops(torch.device("cpu")) is None
    assert flops.peak_flops(torch.device("cpu"), override_tflops=100) == 100e12


def test_attention_falls_back_when_the_fastest_is_unavailable(make_params, monkeypatch, capsys):
    # flash-attention is not installed on CPU test machines: auto mode moves on to SDPA.
    monkeypatch.setattr(loading, "attention_candidates", lambda requested, device: ["flash_attention_2", "sdpa"])
    model = loading.load_base_model(make_params(), torch.device("cpu"))
    assert model.config._attn_implementation == "sdpa"
    assert "attention flash_attention_2 unavailable" in capsys.readouterr().out


def test_an_explicit_attention_choice_is_not_silently_replaced(make_params):
    with pytest.raises((ImportError, ValueError)):
        loading.load_base_model(make_params("model.attn_implementation=flash_attention_2"), torch.device("cpu"))


def test_bench_runs_the_trainer_on_a_model_shape_and_reports_a_record():
    from conftest import run_cli

    result = run_cli("bench", "--shape", "tiny", "--seq", "256", "--steps", "3", "--warmup", "1", "--global-batch", "8",
                     "--price-usd-per-hour", "3.6")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert record["model"] == "tiny" and record["variant"] == "ours_lora" and record["gpu"] == "cpu"
    assert record["tokens_per_s"] == pytest.approx(record["tokens"] / record["seconds"])
    assert record["tokens"] > 3 * 8 * 256 * 0.5  # three steps of mostly-full packed rows
    # $3.60 per hour = $0.001 per second: dollars per million tokens follow from tokens/s.
    assert record["usd_per_million_tokens"] == pytest.approx(0.001 / record["tokens_per_s"] * 1e6)
    assert record["mfu"] is None  # no known peak FLOP/s for a CPU


def test_bench_memory_cap_is_refused_where_there_is_no_gpu_to_cap(capsys):
    from {{ cookiecutter.package_name }}.cli import EXIT_INVALID, run_command

    assert run_command(["bench", "--shape", "tiny", "--seq", "64", "--gpu-memory-gib", "20"]) == EXIT_INVALID
    assert "bench --gpu-memory-gib caps a GPU's memory; this run is on the CPU" in capsys.readouterr().err
