"""Memory levers on CPU: the chunked loss and host offloading change memory, never the update;
their memory is measured (torch.profiler) and checked against the planner's model of it; the
planner's longest row and the attention for long rows."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.compute import plan
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.model import attention, loading, loss, offload
from {{ cookiecutter.package_name }}.model.fit import choose_micro_batch
from {{ cookiecutter.package_name }}.model.logps import sequence_logps

MIB = 2**20
quiet = {"log": lambda *_: None}


def random_llama(vocab=1000, tied=True, layers=2, **extra):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=tied, attn_implementation="sdpa", **extra)
    return LlamaForCausalLM(config)


def packed_batch(vocab: int, rows=2, tokens=50):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, tokens), generator=generator)
    labels = ids.clone()
    labels[:, :24] = data.IGNORE  # prompts: with chunks of 7 tokens, whole chunks hold no trained token
    position_ids = torch.cat([torch.arange(30), torch.arange(tokens - 30)]).repeat(rows, 1)  # two examples per row
    return {"input_ids": ids, "labels": labels, "position_ids": position_ids}


def loss_and_gradients(model, batch, **kwargs):
    model.train()
    out = model(**batch, use_cache=False, **kwargs)
    out.loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.loss.detach(), gradients


def assert_same_update(plain, chunked):
    (plain_loss, plain_grads), (chunked_loss, chunked_grads) = plain, chunked
    torch.testing.assert_close(chunked_loss, plain_loss, rtol=1e-5, atol=1e-5)
    assert plain_grads and chunked_grads.keys() == plain_grads.keys()
    for name, gradient in plain_grads.items():
        assert gradient.abs().max() > 0, name  # a gradient that is zero everywhere would prove nothing
        torch.testing.assert_close(chunked_grads[name], gradient, rtol=1e-5, atol=1e-5 * gradient.abs().max().item(), msg=name)


@pytest.mark.parametrize("tied", [True, False], ids=["tied-embeddings", "untied"])
@pytest.mark.parametrize("normalised_by", [55, None], ids=["global-batch-tokens", "own-tokens"])
def test_chunked_loss_equals_the_plain_loss_every_weight_trained(tied, normalised_by):
    """Full fine-tuning in fp32, so every weight has a gradient, the tied embedding / output
    matrix included (it gets gradient from both ends); chunks of 7 tokens, the first ones with
    no trained token."""
    plain = random_llama(tied=tied)
    chunked = random_llama(tied=tied)
    assert loss.use_chunked_loss(chunked, chunk=7)
    batch = packed_batch(1000)
    extra = {"num_items_in_batch": normalised_by} if normalised_by else {}
    assert_same_update(loss_and_gradients(plain, batch, **extra), loss_and_gradients(chunked, batch, **extra))
    assert chunked(**batch, use_cache=False).logits is None  # never materialised
    assert chunked(input_ids=batch["input_ids"]).logits.shape == (2, 50, 1000)  # without labels: unchanged


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_chunked_loss_equals_the_plain_loss_with_adapters(make_params, method):
    """The trainer's own model path (tiny model from disk, PEFT adapters; QLoRA's base in
    bitsandbytes 4-bit) with random B matrices, so that every adapter weight gets a gradient."""
    params = make_params(f"model.method={method}", "lora.dropout=0")
    cpu = torch.device("cpu")
    results = []
    for chunked in (False, True):
        base = loading.load_base_model(params, cpu)
        if chunked:
            assert loss.use_chunked_loss(base, chunk=7)
        torch.manual_seed(0)
        model = loading.add_adapter(base, params)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        results.append(loss_and_gradients(model, packed_batch(base.config.vocab_size), num_items_in_batch=70))
    assert any("lora_magnitude" in name for name in results[0][1]) == (method == "dora")
    assert_same_update(*results)


def sequence_logps_and_gradients(model, batch):
    logps, counts = sequence_logps(model, batch)
    (logps * torch.arange(1, logps.numel() + 1, dtype=logps.dtype).view_as(logps)).sum().backward()  # a weight per sequence
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logps.detach(), counts, gradients


@pytest.mark.parametrize("tied", [True, False], ids=["tied-embeddings", "untied"])
def test_preference_log_probabilities_in_chunks_equal_the_whole_logits(tied):
    """The preference objectives' per-sequence log-probabilities (model/logps.py) through the
    chunked forward (chunks of 7 tokens), in float64 under a LoRA adapter with random B
    matrices: the same sums and the same gradients as from the whole logits, and the same
    adapter-off reference."""
    from peft import LoraConfig, get_peft_model

    results = []
    for chunked in (False, True):
        base = random_llama(tied=tied).double()
        if chunked:
            assert loss.use_chunked_loss(base, chunk=7)
        torch.manual_seed(0)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                init_lora_weights=False))
        assert loss.in_chunks(model) == chunked
        batch = packed_batch(1000)
        logps, counts, gradients = sequence_logps_and_gradients(model, batch)
        with torch.no_grad(), model.disable_adapter():
            reference, _ = sequence_logps(model, batch)
        results.append((logps, counts, gradients, reference))
    (plain, plain_counts, plain_grads, plain_ref), (chunked, chunked_counts, chunked_grads, chunked_ref) = results
    assert plain.dtype == torch.float64 and plain.shape == (2, 2)
    assert torch.equal(chunked_counts, plain_counts) and plain_counts.tolist() == [[6, 20]] * 2  # trained tokens 24-29 and 30-49
    torch.testing.assert_close(chunked, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked_ref, plain_ref, rtol=1e-12, atol=1e-12)
    assert (chunked - chunked_ref).abs().max() > 0.1  # the adapter moves the sequences: the reference is not the policy
    assert plain_grads and chunked_grads.keys() == plain_grads.keys()
    for name, gradient in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], gradient, rtol=1e-10, atol=1e-12, msg=name)


def test_chunked_loss_is_kept_off_where_the_loss_is_more_than_cross_entropy():
    softcapped = random_llama()
    softcapped.config.final_logit_softcapping = 30.0
    assert not loss.use_chunked_loss(softcapped)
    assert "forward" not in vars(softcapped)  # unchanged: transformers' loss


def test_the_trainer_uses_the_chunked_loss_by_default(make_params):
    from {{ cookiecutter.package_name }}.train import setup

    params = make_params("train.max_steps=2")
    data.prepare(params, **quiet)
    assert setup(params).loss == "chunked"
    assert setup(make_params("train.max_steps=2", "train.chunked_loss=false")).loss == "transformers"


# ======================================================================== measured memory


def peak_allocated(step) -> int:
    """Peak bytes the CPU allocator held above its level at the start of `step` (profiler memory events)."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        profiler.export_chrome_trace(trace.name)
        events = [e for e in json.load(open(trace.name))["traceEvents"] if e.get("name") == "[memory]"]
    start = events[0]["args"]["Total Allocated"] - events[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in events) - start


def test_chunked_loss_peak_memory_measured_and_as_planned():
    """A 16,384-word vocabulary and a 4,096-token row in fp32 (256 MiB of logits): the loss alone,
    then a whole step of a one-layer model. Measured factors are printed; the planner's loss
    entry must be within 20% of the measured loss peak, for both losses."""
    vocab, tokens, hidden = 16384, 4096, 64
    chunk = loss.chunk_tokens(vocab, budget_bytes=16 * MIB)  # 256 tokens: 16 chunks
    head = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    torch.manual_seed(0)
    states = torch.randn(1, tokens, hidden, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens))

    def plain_loss():
        from transformers.loss.loss_utils import ForCausalLMLoss

        ForCausalLMLoss(head(states), labels, vocab).backward()

    def chunked_loss():
        loss.chunked_cross_entropy(states, head, labels, vocab, chunk=chunk).backward()

    measured = {"hf": peak_allocated(plain_loss), "chunked": peak_allocated(chunked_loss)}
    shape = plan.ModelShape("probe", hidden, 128, 1, 4, 2, vocab, False)
    for kind, peak in measured.items():
        setup = plan.TrainSetup(micro_batch=1, seq_len=tokens, loss=kind, dtype_bytes=4, chunk_tokens=chunk)
        planned = plan.logits_and_loss_bytes(shape, setup)
        print(f"loss {kind}: measured {peak / MIB:.1f} MiB, planned {planned / MIB:.1f} MiB")
        assert planned == pytest.approx(peak, rel=0.20), kind
    factor = measured["hf"] / measured["chunked"]
    print(f"loss peak: {factor:.1f}x smaller chunked")
    assert factor > 10

    model = random_llama(vocab=vocab, tied=False, layers=1)
    for p in model.parameters():
        p.requires_grad_(p.dim() == 2 and p.shape == (hidden, 128))  # one MLP weight trained: the base frozen, as with LoRA
    batch = {"input_ids": torch.randint(0, vocab, (1, tokens)), "position_ids": torch.arange(tokens)[None]}
    batch["labels"] = batch["input_ids"]

    def step():
        model(**batch, use_cache=False).loss.backward()

    model.train()
    whole_plain = peak_allocated(step)
    assert loss.use_chunked_loss(model, chunk=chunk)
    whole_chunked = peak_allocated(step)
    print(f"whole step: {whole_plain / MIB:.0f} MiB with transformers' loss, {whole_chunked / MIB:.0f} MiB chunked "
          f"({whole_plain / whole_chunked:.1f}x)")
    assert whole_chunked < whole_plain / 5


def test_a_preference_step_never_holds_the_whole_logits():
    """The preference step's log-probabilities and their backward (model/logps.py), for a pair of
    2,048-token answers in one 4,096-token row of a 16,384-word vocabulary: measured with the
    whole logits, then with the chunked forward the trainer uses."""
    vocab, tokens, hidden = 16384, 4096, 64
    model = random_llama(vocab=vocab, tied=False, layers=1)
    for p in model.parameters():
        p.requires_grad_(p.dim() == 2 and p.shape == (hidden, 128))  # the base frozen, as with LoRA
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, [0, tokens // 2]] = data.IGNORE  # each answer's first token is its prompt
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(tokens // 2).repeat(1, 2)}
    model.train()

    def step():
        logps, _ = sequence_logps(model, batch)
        logps.sum().backward()

    whole = peak_allocated(step)
    assert loss.use_chunked_loss(model, chunk=loss.chunk_tokens(vocab, budget_bytes=16 * MIB))
    chunked = peak_allocated(step)
    print(f"preference step: {whole / MIB:.0f} MiB from the whole logits, {chunked / MIB:.0f} MiB in chunks "
          f"({whole / chunked:.1f}x)")
    assert chunked < whole / 5


def test_fsdp_with_the_loss_in_chunks_trains_like_one_process(make_params, tmp_path, monkeypatch):
    """FSDP over 2 CPU processes with 64-token loss chunks (each recomputed in backward, with the
    output layer inside the sharded root) against one process with transformers' loss."""
    from {{ cookiecutter.package_name }}.train import train
    from test_recipe import SAME_UPDATE, assert_same_adapter, run_two_processes

    from conftest import cli_overrides

    single = make_params(*SAME_UPDATE, "train.chunked_loss=false")
    data.prepare(single, **quiet)
    train(single, **quiet)
    vocab = json.loads((Path(single.model.base) / "config.json").read_text())["vocab_size"]
    monkeypatch.setenv("TEST_LOSS_CHUNK_BYTES", str(4 * vocab * 64))
    chunked = cli_overrides(single, **{"train.chunked_loss": "true", "train.output_dir": tmp_path / "fsdp",
                                       "checkpoint.dir": tmp_path / "fsdp-checkpoints"})
    result = run_two_processes("fsdp", *chunked)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2x cpu (FSDP)" in result.stdout + result.stderr and "chunked loss" in result.stdout + result.stderr
    assert_same_adapter(f"{single.train.output_dir}/adapter", tmp_path / "fsdp/adapter")


def test_fsdp_shards_a_4bit_base_and_trains_like_one_process(make_params, tmp_path):
    """QLoRA under FSDP on 2 CPU processes (gloo) against one process: the 4-bit codes are
    stored in the compute dtype, so FSDP shards them like any weight (each process holds half
    the frozen bytes), each layer gathers its shards for its matmuls and the quantization state
    is restored from the module, and the adapter and losses come out the same."""
    import mlflow

    from {{ cookiecutter.package_name }}.train import train
    from test_recipe import SAME_UPDATE, assert_same_adapter, run_two_processes

    from conftest import cli_overrides

    single = make_params(*SAME_UPDATE, "model.method=qlora")
    data.prepare(single, **quiet)
    train(single, **quiet)
    sharded = cli_overrides(single, **{"train.output_dir": tmp_path / "fsdp", "checkpoint.dir": tmp_path / "fsdp-checkpoints",
                                       "tracking.uri": f"sqlite:///{tmp_path / 'fsdp.db'}"})
    result = run_two_processes("fsdp", *sharded)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(qlora) on 2x cpu (FSDP)" in result.stdout + result.stderr
    assert_same_adapter(f"{single.train.output_dir}/adapter", tmp_path / "fsdp/adapter")
    one_loss = Path(single.train.output_dir, "train_loss.csv").read_text()
    assert Path(tmp_path / "fsdp/train_loss.csv").read_text() == one_loss  # same losses, to the digits written

    def logged(uri: str, output_dir) -> dict:
        run_id = json.loads((Path(output_dir) / "mlflow_run.json").read_text())["run_id"]
        return mlflow.MlflowClient(uri).get_run(run_id).data.params

    whole = int(logged(single.tracking.uri, single.train.output_dir)["resolved.frozen_bytes_per_process"])
    shard = int(logged(f"sqlite:///{tmp_path / 'fsdp.db'}", tmp_path / "fsdp")["resolved.frozen_bytes_per_process"])
    base = loading.load_base_model(single, torch.device("cpu"))
    packed = [p for p in base.parameters() if p.dtype == torch.float32 and p.shape[-1] == 1 and hasattr(p, "quant_state")]
    assert packed  # the 4-bit codes, packed into float32 storage (the compute dtype here)
    assert whole == sum(p.numel() * p.element_size() for p in base.parameters())
    assert abs(shard - whole / 2) <= 0.01 * whole  # half each, to the rounding of uneven shards


# ============================================================================== offloading


def test_offloading_changes_where_inputs_wait_not_the_update(make_params, monkeypatch):
    """Every layer checkpointed, with and without host offloading (MLP in slices of 16 tokens):
    the same gradients as no checkpointing; each layer's input went through a host copy of the
    size the planner counts as host RAM."""
    params = make_params("lora.dropout=0")
    cpu = torch.device("cpu")
    batch = packed_batch(1000, rows=2, tokens=50)
    runs = {}
    for mode in ("none", "checkpointed", "offloaded"):
        torch.manual_seed(0)
        model = loading.add_adapter(loading.load_base_model(params, cpu), params)
        batch["input_ids"] = batch["input_ids"] % model.config.vocab_size
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        copies = []
        if mode != "none":
            loading.checkpoint_layers(model, model.config.num_hidden_layers)
        if mode == "offloaded":
            assert offload.offload_layer_inputs(model, cpu, tile=16) == model.config.num_hidden_layers

            def counting_pack(self, tensor, pack=offload.HostOffload.pack, copies=copies):
                copies.append(tensor.nbytes)
                return pack(self, tensor)

            monkeypatch.setattr(offload.HostOffload, "pack", counting_pack)
        runs[mode] = loss_and_gradients(model, batch, num_items_in_batch=60)
        if mode == "offloaded":
            config = model.config
            shape = plan.ModelShape("tiny", config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                                    config.num_attention_heads, config.num_key_value_heads, config.vocab_size, True)
            setup = plan.TrainSetup(micro_batch=2, seq_len=50, checkpointing=1.0, offload=True, dtype_bytes=4)
            assert sum(copies) == plan.estimate_memory(shape, setup).host_offloaded
            assert len(copies) == config.num_hidden_layers
            assert offload.offload_layer_inputs(model, cpu, on=False) == 0  # and back
            assert not any(getattr(layer._gradient_checkpointing_func, "offloads", False) for layer in loading.decoder_layers(model))
    assert_same_update(runs["none"], runs["checkpointed"])
    assert_same_update(runs["none"], runs["offloaded"])


def test_offload_activations_true_checkpoints_and_offloads_every_layer(make_params):
    params = make_params("train.offload_activations=true", "train.gradient_checkpointing=auto")
    cpu = torch.device("cpu")
    model = loading.add_adapter(loading.load_base_model(params, cpu), params)
    assert choose_micro_batch(model, None, params, per_process=8, device=cpu, sharded=False) == (4, 2, True)
    assert all(layer.gradient_checkpointing and layer._gradient_checkpointing_func.offloads for layer in loading.decoder_layers(model))
    with pytest.raises(ConfigError, match="offload_activations=true needs gradient_checkpointing"):
        make_params("train.offload_activations=true", "train.gradient_checkpointing=false")


# =========================================================================== long rows, plan


def test_long_rows_never_get_a_mask_on_a_gpu(make_params):
    assert attention.planned("auto", 4096) == "sdpa"
    assert attention.planned("auto", attention.LONG_ROW_TOKENS + 1) == attention.VARLEN
    assert attention.planned("flash_attention_2", 100_000) == "flash_attention_2"
    model = loading.load_base_model(make_params(), torch.device("cpu"))  # loaded with sdpa
    gpu = torch.device("cuda")  # only compared, never used
    assert attention.for_long_rows(model, "auto", 100_000, gpu)
    assert not attention.for_long_rows(model, "auto", 4096, gpu)
    assert not attention.for_long_rows(model, "auto", 100_000, torch.device("cpu"))
    with pytest.raises(ConfigError, match="model.attn_implementation=sdpa builds a 100000 x 100000 mask .* use auto or varlen"):
        attention.for_long_rows(model, "sdpa", 100_000, gpu)
    with pytest.raises(ConfigError, match="too long for a T x T mask: .*runs on CUDA GPUs only"):
        attention.use_varlen(model, torch.device("cpu"), torch.bfloat16, why="data.max_length=100000 is too long for a T x T mask: ")


def test_plan_targets_for_llama_8b(make_params):
    """The planner's figures for the default trainer at torchtune's published settings and for
    unsloth's long-row setting, on the RTX 4090 row (what tests/test_plan.py's published table
    keeps honest)."""
    shape = plan.KNOWN_SHAPES["llama-3.1-8b"]
    torchtune = dict(lora_r=8, micro_batch=2, seq_len=2048, checkpointing=1.0, loss="chunked")
    lora = plan.TrainSetup(method="lora", targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), **torchtune)
    qlora = plan.TrainSetup(method="qlora", targets="all-linear", **torchtune)
    assert plan.estimate_memory(shape, lora).allocator_bytes / plan.GIB <= 18.6  # torchtune 16.2 + the planner's +12%
    assert plan.estimate_memory(shape, qlora).allocator_bytes / plan.GIB <= 8.5  # torchtune 7.4 + the planner's +15%
    # transformers' loss keeps all the logits: 6.85 GiB of them here.
    assert plan.estimate_memory(shape, replace(lora, loss="hf")).logits_and_loss / plan.GIB > 6.8

    params = make_params("model.base=meta-llama/Llama-3.1-8B", "model.dtype=auto", "model.method=qlora", "lora.r=32", "lora.target_modules=all-linear")
    row = plan.longest_row(shape, plan.base_setup(params), params, plan.GPUS["RTX4090"])
    assert row["tokens"] >= 80_000 and row["offload_activations"]  # unsloth: 78,475
    assert row["host_ram_gib"] == pytest.approx(32 * row["tokens"] * 4096 * 2 / plan.GIB, rel=0.01)
    without = make_params("model.base=meta-llama/Llama-3.1-8B", "model.dtype=auto", "model.method=qlora", "lora.r=32", "lora.target_modules=all-linear",
                          "train.offload_activations=false", "train.chunked_loss=false")
    assert plan.longest_row(shape, plan.base_setup(without), without, plan.GPUS["RTX4090"])["tokens"] < 10_000


@pytest.mark.parametrize("model, rows", [("Qwen/Qwen2.5-0.5B-Instruct", 1024), ("meta-llama/Llama-3.1-8B", 2048)])
def test_qlora_runs_fit_a_16gb_card(make_params, model, rows):
    params = make_params(f"model.base={model}", "model.dtype=auto", "model.method=qlora", f"data.max_length={rows}", "train.micro_batch=auto",
                         "train.global_batch=16")
    t4 = next(entry for entry in plan.make_plan(params)["gpus"] if entry["gpu"] == "T4")
    assert t4["fits"] and t4["memory"]["peak"] <= t4["usable_gib"]


def test_plan_reports_the_longest_row_in_table_and_json(make_params):
    params = make_params("model.base=meta-llama/Llama-3.1-8B", "model.dtype=auto", "model.method=qlora")
    result = plan.make_plan(params)
    rtx = next(entry for entry in result["gpus"] if entry["gpu"] == "RTX4090")
    assert rtx["longest_row"]["tokens"] > 60_000
    assert result["setup"]["loss"] == "chunked" and result["setup"]["attention"] == "sdpa"
    json.dumps(result)  # what --json prints
    table = plan.render_table(result)
    assert f"RTX4090    up to {rtx['longest_row']['tokens']:>9,} tokens (layer inputs in" in table
    assert "trainer: chunked loss, sdpa attention" in table
    fused = plan.make_plan(make_params("model.base=meta-llama/Llama-3.1-8B", "model.dtype=auto", "train.liger_kernels=true"))
    assert fused["setup"]["loss"] == "fused"
