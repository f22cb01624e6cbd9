"""`export` on the tiny model: vLLM's rules on adapters that break each one, the merged model's
held-out loss next to the adapter's, GGUF + Modelfile, the run's MLflow entries and `report`.

The GGUF files' own correctness (per family, read back by transformers) is test_export_gguf.py;
llama.cpp running them is test_export_llama_cpp.py. vLLM cannot run on a CPU: its rules are
tested here on real PEFT adapters, and benchmarks/run_gpu.sh serves an exported adapter on a GPU.
"""

import json
import sqlite3

import pytest
import torch

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.config import load_params
from {{ cookiecutter.package_name }}.export import vllm
from {{ cookiecutter.package_name }}.train import train

from conftest import PARAMS, cli_overrides, run_cli

quiet = {"log": lambda *_: None}


def peft_adapter(tiny_model_dir, out_dir, **lora):
    """A real adapter on the tiny model, saved by PEFT as training saves one (untrained: only its config matters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], **lora})
    get_peft_model(model, config).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out_dir)
    return out_dir


@pytest.mark.parametrize("lora, rule", [
    ({"use_dora": True}, "DoRA (use_dora: true)"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head']"),
    ({"bias": "lora_only"}, "bias 'lora_only'"),
    ({"r": 640}, "rank 640: above 512"),
    ({"r": 8, "rank_pattern": {"v_proj": 1024}}, "rank 1024: above 512"),
])
def test_vllm_rules_name_what_each_adapter_breaks(lora, rule, tiny_model_dir, tmp_path):
    adapter = peft_adapter(tiny_model_dir, tmp_path / "adapter", **lora)
    problems = vllm.problems(vllm.adapter_config(adapter))
    assert len(problems) == 1 and problems[0].startswith(rule), problems


@pytest.mark.parametrize("rank, flag", [(1, 1), (4, 8), (8, 8), (12, 16), (16, 16), (300, 320), (512, 512)])
def test_a_servable_adapter_gets_the_max_lora_rank_vllm_accepts(rank, flag, tiny_model_dir, tmp_path):
    adapter = peft_adapter(tiny_model_dir, tmp_path / "adapter", r=rank)
    assert vllm.problems(vllm.adapter_config(adapter)) == []
    record = vllm.export_adapter(adapter, tmp_path / "vllm", "org/base", "support")
    assert record["max_lora_rank"] == flag
    assert record["command"] == (f"vllm serve org/base --enable-lora --lora-modules support={tmp_path / 'vllm'} "
                                 f"--max-lora-rank {flag}")
    assert sorted(p.name for p in (tmp_path / "vllm").iterdir()) == sorted(p.name for p in adapter.iterdir())


def test_plan_and_train_are_warned_before_the_gpu_time_is_spent():
    def params(*overrides):
        return load_params(PARAMS, ["model.base=org/base", *overrides])

    assert vllm.planned_warning(params("model.method=lora", "lora.r=16", "export.targets=[vllm]")) is None
    warning = vllm.planned_warning(params("model.method=dora", "lora.r=1024", "export.targets=[vllm, gguf]"))
    assert "DoRA" in warning and "rank 1024" in warning and "merged model instead" in warning
    # Not exported to vLLM: nothing to warn about.
    assert vllm.planned_warning(params("model.method=dora", "export.targets=[gguf]")) is None


def test_export_params_are_validated_with_the_key_named(tmp_path):
    from {{ cookiecutter.package_name }}.config import ConfigError

    for override, words in [("export.targets=[tensorrt]", "export.targets.0"), ("export.gguf_types=[Q4_K_M]", "export.gguf_types.0"),
                            ("export.name=my model", "export.name"), ("export.check_prompts=-1", "export.check_prompts")]:
        with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
            load_params(PARAMS, ["model.base=org/base", override])


@pytest.fixture
def trained(make_params):
    params = make_params("train.max_steps=4", "eval.generations=4", "tracking.system_metrics=false",
                         "checkpoint.every_steps=1000")
    data.prepare(params, **quiet)
    train(params, resume="never", **quiet)
    return params


def test_export_writes_every_target_logs_it_and_report_lists_it(trained, tmp_path):
    result = run_cli("export", *cli_overrides(trained), "--set", "export.gguf_types=[F16,Q8_0]", "--set", "export.name=support",
                     "--target", "vllm", "--target", "merged", "--target", "ollama")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "outputs/export"
    records = json.loads((out / "exports.json").read_text())
    assert [r["target"] for r in records] == ["vllm", "merged", "gguf", "gguf", "ollama"]  # ollama brought gguf along
    merged = records[1]
    # The merged model's held-out loss, next to the adapter's, on every export.
    assert merged["eval_tokens"] > 0 and abs(merged["merged_loss_change_pct"]) < 1
    assert f"({merged['merged_loss_change_pct']:+.2f}% after merging)" in result.stdout
    f16, q8 = records[2], records[3]
    assert f16["reader"]["passed"] and f16["reader"]["max_logit_diff"] <= 1e-4 and q8["reader"]["passed"]
    assert (out / "gguf/support-F16.gguf").stat().st_size == f16["bytes"] and q8["bytes"] < f16["bytes"]
    assert "llama-quantize" in result.stdout and "ollama create support -f Modelfile" in result.stdout
    modelfile = (out / "gguf/Modelfile").read_text().splitlines()
    assert "FROM ./support-F16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert f"vllm serve {trained.model.base} --enable-lora --lora-modules support=" in result.stdout

    # The training run in MLflow has every export's size and the loss comparison...
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        metrics = dict(db.execute("select key, value from metrics where key like 'export_%'").fetchall())
    assert metrics["export_gguf_f16_mib"] == pytest.approx(f16["bytes"] / 2**20)
    assert metrics["export_merged_loss_change_pct"] == pytest.approx(merged["merged_loss_change_pct"])
    # ...and `report` lists them.
    report = run_cli("report", "--set", f"tracking.uri={trained.tracking.uri}", "--set", f"model.base={trained.model.base}",
                     "--experiment", trained.tracking.experiment)
    assert report.returncode == 0, report.stderr
    assert "gguf F16 " in report.stdout and f"merged held-out loss {merged['merged_loss_change_pct']:+.2f}% vs the adapter" in report.stdout


def test_an_adapter_vllm_refuses_is_exported_merged_with_the_rule_named(make_params, tmp_path):
    from {{ cookiecutter.package_name }}.compute import plan

    params = make_params("model.method=dora", "train.max_steps=2", "eval.generations=2", "tracking.system_metrics=false",
                         "export.targets=[vllm]")
    data.prepare(params, **quiet)
    # Told before any GPU time is spent: by `plan`, and by `train` before its first step.
    assert any("vLLM will refuse this adapter: DoRA" in w for w in plan.make_plan(params)["warnings"])
    said = []
    train(params, resume="never", log=said.append)
    assert any(str(line).startswith("warning: export.targets includes vllm, but vLLM will refuse") for line in said)
    result = run_cli("export", *cli_overrides(params), "--target", "vllm")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vllm: vLLM would refuse this adapter: DoRA (use_dora: true)" in result.stdout
    records = json.loads((tmp_path / "outputs/export/exports.json").read_text())
    assert records[0]["fallback"] == "merged" and records[1]["target"] == "merged"
    assert (tmp_path / "outputs/export/merged/config.json").is_file() and not (tmp_path / "outputs/export/vllm").exists()
    assert f"vllm serve {tmp_path / 'outputs/export/merged'} --served-model-name" in result.stdout


def test_no_adapter_is_a_clear_error(make_params, tmp_path):
    result = run_cli("export", *cli_overrides(make_params()), "--target", "gguf")
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'outputs/adapter'}: no trained adapter; run `train` first"
