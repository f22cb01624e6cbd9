"""Preference training on the tiny model: exact losses, the reference, and exact resume.

The losses are checked against an independent computation: every packed sequence is run
alone through the model (with the adapter, and with it switched off for the reference), its
log-probabilities summed with a plain log-softmax, and each loss written out from its paper.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.model import loading
from {{ cookiecutter.package_name }}.model import logps as logps_module
from {{ cookiecutter.package_name }}.model.batch import to_device
from {{ cookiecutter.package_name }}.train import objectives, setup, train
from {{ cookiecutter.package_name }}.train.objectives import reference
from {{ cookiecutter.package_name }}.train.objectives.preference import adapter_off_logps, pair_terms

from conftest import PROJECT, cli_overrides, run_cli, smoke_params

LOG2 = torch.tensor(math.log(2), dtype=torch.float32)
SETTINGS = ("train.objective=dpo", "train.global_batch=4", "train.micro_batch=2", "lora.dropout=0")


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("preference") / "pairs.jsonl"
    subprocess.run([sys.executable, str(PROJECT / "scripts/make_sample_data.py"), "--preferences", "--count", "40",
                    "--out", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, preference_data):
    tmp = tmp_path_factory.mktemp("dpo")
    params = smoke_params(tmp, tiny_model_dir, preference_data, f"data.path={preference_data}", *SETTINGS)
    data.prepare(params, log=lambda *_: None)
    return params, tmp


def policy(params, seed: int | None):
    """The tiny base with a LoRA adapter; its B matrices random (policy != reference) unless seed is None."""
    torch.manual_seed(seed or 0)  # the A matrices: the same whatever ran before in this process
    model = loading.add_adapter(loading.load_base_model(params, torch.device("cpu")), params)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data = torch.randn(parameter.shape, generator=generator) * 0.3
    return model.eval()


def batch_of(params, rows=range(4)):
    return to_device(data.load_prepared(params.data.prepared_dir, "train"), list(rows), torch.device("cpu"))


def test_dpo_loss_is_exactly_log_2_per_pair_at_step_0(prepared):
    params, _ = prepared
    model, batch = policy(params, None), batch_of(params)
    logps, counts = logps_module.sequence_logps(model, batch)
    ref = adapter_off_logps(model, model, batch, logps.shape[1])
    losses, chosen, rejected = pair_terms(logps, counts, ref, "sigmoid", 0.1, 0.0)
    assert len(losses) >= 4
    assert torch.equal(losses, LOG2.expand_as(losses))  # the policy is the reference: every pair exactly log 2
    assert torch.equal(chosen, torch.zeros_like(chosen)) and torch.equal(rejected, torch.zeros_like(rejected))


def alone(model, ids, labels) -> float:
    """One sequence's summed log-probability of its trained tokens, run alone, in float64 from the logits."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[t, labels[t + 1]]) for t in range(len(ids) - 1) if labels[t + 1] != data.IGNORE)


def sequences_of(batch):
    """Each row's sequences (ids, labels), cut where the position ids restart; padding left out."""
    out = []
    for ids, labels, positions in zip(batch["input_ids"], batch["labels"], batch["position_ids"], strict=True):
        starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [len(ids)]
        for a, b in zip(starts, starts[1:], strict=False):
            if (labels[a:b] != data.IGNORE).any():
                out.append((ids[a:b].tolist(), labels[a:b].tolist()))
    return out


def paper_loss(name, c, r, rc, rr, nc, nr, beta, gamma):
    if name == "sigmoid":
        return -math.log(1 / (1 + math.exp(-beta * ((c - rc) - (r - rr)))))
    if name == "ipo":
        return ((c - rc) / nc - (r - rr) / nr - 1 / (2 * beta)) ** 2
    if name == "simpo":
        return -math.log(1 / (1 + math.exp(-(beta * (c / nc - r / nr) - gamma))))
    odds = lambda p: math.log(math.exp(p) / (1 - math.exp(p)))  # noqa: E731 - ORPO's odds of a mean log-probability
    return -c / nc - beta * math.log(1 / (1 + math.exp(-(odds(c / nc) - odds(r / nr)))))


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "simpo", "orpo"])
def test_per_pair_losses_equal_an_independent_computation(prepared, loss):
    params, _ = prepared
    model, batch = policy(params, seed=3), batch_of(params)
    beta, gamma = {"simpo": (2.0, 0.5)}.get(loss, (0.1, 0.5))
    logps, counts = logps_module.sequence_logps(model, batch)
    ref = adapter_off_logps(model, model, batch, logps.shape[1]) if loss in ("sigmoid", "ipo") else None
    ours = pair_terms(logps, counts, ref, loss, beta, gamma)[0].tolist()

    sequences = sequences_of(batch)
    expected = []
    for (c_ids, c_labels), (r_ids, r_labels) in zip(sequences[0::2], sequences[1::2], strict=True):
        c, r = alone(model, c_ids, c_labels), alone(model, r_ids, r_labels)
        with model.disable_adapter():
            rc, rr = alone(model, c_ids, c_labels), alone(model, r_ids, r_labels)
        n_c, n_r = sum(x != data.IGNORE for x in c_labels[1:]), sum(x != data.IGNORE for x in r_labels[1:])
        expected.append(paper_loss(loss, c, r, rc, rr, n_c, n_r, beta, gamma))
    assert len(ours) == len(expected) >= 4
    assert ours == pytest.approx(expected, abs=1e-5, rel=1e-5)
    assert len(set(round(x, 4) for x in ours)) > 1  # the pairs differ: not one number repeated


def test_a_training_run_logs_log_2_first_and_the_preference_metrics(prepared, tmp_path):
    params, _ = prepared
    params = smoke_params(tmp_path, params.model.base, params.data.path, f"data.path={params.data.path}",
                          f"data.prepared_dir={params.data.prepared_dir}", *SETTINGS, "train.max_steps=3",
                          "train.log_every_steps=1", "train.warmup_steps=0")
    adapter = train(params, resume="never", log=lambda *_: None)
    losses = [float(line.split(",")[1]) for line in (tmp_path / "outputs/train_loss.csv").read_text().splitlines()[1:]]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6) and losses[-1] < losses[0]
    # A client, not mlflow.set_tracking_uri: that sets MLFLOW_TRACKING_URI for the whole process.
    client = MlflowClient(params.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])
    for name in ("reward_chosen", "reward_rejected", "reward_margin", "preference_accuracy"):
        assert name in run.data.metrics
    assert run.data.params["train.objective"] == "dpo"
    assert (adapter / "adapter_model.safetensors").is_file()


def test_objective_and_data_must_agree(prepared, make_params):
    params, _ = prepared
    summary = json.loads((Path(params.data.prepared_dir) / "summary.json").read_text())
    with pytest.raises(ConfigError, match="train.objective=dpo"):
        objectives.check_data(make_params("train.objective=dpo"), {**summary, "data": None})
    with pytest.raises(ConfigError, match="holds preference pairs"):
        objectives.check_data(make_params(), summary)


def test_bad_objective_settings_name_the_key(tmp_path):
    result = run_cli("train", "--smoke", "--set", "train.objective=ppo", cwd=PROJECT)
    assert result.returncode == 2 and "train.objective" in result.stderr
    result = run_cli("train", "--smoke", "--set", "train.preference_loss=kto", cwd=PROJECT)
    assert result.returncode == 2 and "train.preference_loss" in result.stderr
    result = run_cli("train", "--smoke", "--set", "train.beta=0", cwd=PROJECT)
    assert result.returncode == 2 and "train.beta" in result.stderr


def test_precomputed_reference_is_stored_reused_and_keyed(prepared, tmp_path):
    params, _ = prepared
    params = smoke_params(tmp_path, params.model.base, params.data.path, f"data.path={params.data.path}",
                          f"data.prepared_dir={params.data.prepared_dir}", *SETTINGS, "train.precompute_reference=true")
    s = setup(params)  # computes them once, before the first step, and stores them beside the prepared data
    key = _key(s, params)
    folder = reference.folder_for(params.data.prepared_dir, key)
    assert folder.parent.name == Path(params.data.prepared_dir).name + ".reference"
    assert json.loads((folder / reference.KEY).read_text()) == key
    # They are the adapter-off log-probabilities of every row's sequences.
    batch = to_device(s.rows, [0, 1], s.device)
    direct = adapter_off_logps(s.model, s.model, batch, s.objective.precomputed.shape[1])
    assert torch.allclose(s.objective.precomputed[[0, 1]], direct, atol=1e-5)
    # Reused with the same key (a later run, a restart); another key (another chat template) is computed
    # anew, into its own folder.
    messages = []
    again = reference.load_or_compute(s.model, s.model, s.rows, params, key, 2, s.device, False, True, messages.append)
    assert "reusing" in messages[-1] and torch.equal(again, s.objective.precomputed)
    other = dict(key, template="another")
    reference.load_or_compute(s.model, s.model, s.rows, params, other, 2, s.device, False, True, messages.append)
    assert "computing them once" in messages[-1]
    assert reference.folder_for(params.data.prepared_dir, other) != folder
    # A stored folder whose key.json says otherwise is never used.
    (reference.folder_for(params.data.prepared_dir, other) / reference.KEY).write_text(json.dumps(key))
    assert reference.load(reference.folder_for(params.data.prepared_dir, other), other, len(s.rows["input_ids"])) is None


def _key(s, params):
    return reference.reference_key(params, s.summary, s.base_config.to_dict(), s.tokenizer.chat_template, None)


def test_init_adapter_starts_the_policy_and_is_the_frozen_reference(prepared, tmp_path):
    params, _ = prepared
    start = policy(params, seed=5)
    start.save_pretrained(tmp_path / "sft-adapter")
    params = smoke_params(tmp_path, params.model.base, params.data.path, f"data.path={params.data.path}",
                          f"data.prepared_dir={params.data.prepared_dir}", *SETTINGS, f"model.init_adapter={tmp_path / 'sft-adapter'}")
    s = setup(params)
    saved = load_file(tmp_path / "sft-adapter/adapter_model.safetensors")
    loaded = {name: p for name, p in s.model.named_parameters() if "lora_" in name}
    assert len(loaded) == len(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name.replace(".weight", ".default.weight")], tensor)
    # Policy == the initial adapter == the reference: log 2 per pair, with a reference that is not the base.
    assert s.objective.precomputed is not None
    batch = to_device(s.rows, [0, 1], s.device)
    s.model.eval()
    logps, counts = logps_module.sequence_logps(s.model, batch)
    losses = pair_terms(logps, counts, s.objective.precomputed[[0, 1], : logps.shape[1]], "sigmoid", 0.1, 0.0)[0]
    assert torch.allclose(losses, LOG2.expand_as(losses), atol=1e-6)
    base = adapter_off_logps(s.model, s.model, batch, logps.shape[1])
    assert not torch.allclose(base, s.objective.precomputed[[0, 1], : logps.shape[1]], atol=1e-3)


def test_init_adapter_from_an_mlflow_run_is_downloaded_once_and_loaded(prepared, tmp_path):
    import mlflow

    params, _ = prepared
    policy(params, seed=7).save_pretrained(tmp_path / "sft-adapter")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("sft"))
    for file in sorted((tmp_path / "sft-adapter").iterdir()):  # at the artifact root, as a finished `train` logs them
        client.log_artifact(run.info.run_id, str(file))
    client.set_terminated(run.info.run_id)
    params = smoke_params(tmp_path, params.model.base, params.data.path, f"data.path={params.data.path}",
                          f"data.prepared_dir={params.data.prepared_dir}", *SETTINGS,
                          f"model.init_adapter=runs:/{run.info.run_id}")
    s = setup(params)
    saved = load_file(tmp_path / "sft-adapter/adapter_model.safetensors")
    loaded = {name: p for name, p in s.model.named_parameters() if "lora_" in name}
    for name, tensor in saved.items():
        assert torch.equal(loaded[name.replace(".weight", ".default.weight")], tensor)
    folder = tmp_path / "outputs/init_adapter" / run.info.run_id
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # A run id MLflow does not know: the key and the store are named, nothing is left half-downloaded.
    wrong = params.model_copy(update={"model": params.model.model_copy(update={"init_adapter": "runs:/0123456789abcdef"})})
    with pytest.raises(ConfigError, match=r"model.init_adapter: no adapter in MLflow run runs:/0123456789abcdef at tracking.uri=sqlite"):
        setup(wrong)
    assert not (tmp_path / "outputs/init_adapter/0123456789abcdef").exists()


def test_an_init_adapter_of_another_rank_names_the_key(prepared, tmp_path):
    params, _ = prepared
    policy(params, seed=None).save_pretrained(tmp_path / "adapter")
    params = smoke_params(tmp_path, params.model.base, params.data.path, f"data.path={params.data.path}",
                          f"data.prepared_dir={params.data.prepared_dir}", *SETTINGS, f"model.init_adapter={tmp_path / 'adapter'}",
                          f"lora.r={params.lora.r * 2}")
    with pytest.raises(ConfigError, match="model.init_adapter: .* lora.r="):
        setup(params)


def test_sigkill_during_a_dpo_run_then_resume_is_bitwise_identical(prepared, tmp_path):
    assert_sigkill_then_resume_is_bitwise_identical(prepared[0], tmp_path)


def assert_sigkill_then_resume_is_bitwise_identical(params, tmp_path, steps: int = 6):
    """A run killed mid-way (SIGKILL) and resumed ends with the adapter of an uninterrupted one (KTO too)."""
    from test_resume import effective_samples, start, wait_for

    def command(name):
        changes = {"train.output_dir": tmp_path / name, "train.max_steps": steps, "checkpoint.every_steps": 1,
                   "checkpoint.dir": tmp_path / f"ckpt-{name}", "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
        return [sys.executable, "-m", "{{ cookiecutter.package_name }}", "train", *cli_overrides(params, **changes)]

    reference_run = start(command("reference"), tmp_path / "reference.samples")
    assert reference_run.wait(timeout=600) == 0, reference_run.stderr.read()[-3000:]
    log = tmp_path / "killed.samples"
    process = start(command("killed"), log)
    assert wait_for(lambda: log.exists() and len(log.read_text().splitlines()) > 3 or process.poll() is not None, timeout=300)
    process.kill()
    assert process.wait() == -9  # killed mid-run, not finished
    process = start(command("killed"), log)
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    resumed = load_file(tmp_path / "killed/adapter/adapter_model.safetensors")
    uninterrupted = load_file(tmp_path / "reference/adapter/adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert resumed[key].equal(uninterrupted[key]), key
    assert effective_samples(log) == effective_samples(tmp_path / "reference.samples")
    assert log.read_text().count("start ") == 2


def test_plan_counts_the_reference_forward_of_a_preference_step(prepared, make_params):
    from {{ cookiecutter.package_name }}.compute import plan

    params, _ = prepared
    shape = plan.load_model_shape(params.model.base)
    summary = plan.dataset_summary(params)

    def work(*overrides):
        return plan.run_workload(shape, make_params(f"data.prepared_dir={params.data.prepared_dir}", *overrides), summary)

    sft, dpo = work(), work("train.objective=dpo")
    assert sft["reference_flops_per_token"] == 0
    # DPO: one more forward (no backward) over every token of its rows: 4N + 2N against 4N.
    assert dpo["reference_flops_per_token"] == dpo["forward_flops_per_token"] > 0
    for free in (("train.precompute_reference=true",), ("train.preference_loss=simpo",), ("train.preference_loss=orpo",)):
        assert work("train.objective=dpo", *free)["reference_flops_per_token"] == 0
