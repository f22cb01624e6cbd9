"""llama.cpp itself runs the exported GGUF files: the prebuilt binaries of the npm package
node-llama-cpp (3.21.1), driven by tests/llama_cpp/answers.mjs.

  - every family's tiny model, F16: llama.cpp continues a prompt greedily with the same tokens
    as transformers does with the same (16-bit) weights
  - SmolLM2-135M-Instruct trained for a few steps, F16: llama.cpp tokenizes the rendered prompts
    into the project's token ids, and its chat session, rendering the chat template embedded in
    the GGUF, answers every held-out prompt exactly as the project does (greedy); Q8_0: the share
    of identical answers and of identical tokens is measured and printed.

node-llama-cpp is found through NODE_LLAMA_CPP_MODULES (a node_modules folder holding it), else in
.cache/node-llama-cpp/node_modules, which `make setup-llama-cpp` fills. Missing, the tests fail
and say how to install it: they are never skipped.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.evaluate.answers import generate_answers, prompt_text
from {{ cookiecutter.package_name }}.export import checks
from {{ cookiecutter.package_name }}.export import gguf as writer
from {{ cookiecutter.package_name }}.export.merged import merged_model
from {{ cookiecutter.package_name }}.export.stage import export
from {{ cookiecutter.package_name }}.train import train
from test_export_gguf import PROMPT, tiny_family_model

from conftest import PROJECT, smoke_params

NODE_LLAMA_CPP = "node-llama-cpp"
NODE_LLAMA_CPP_VERSION = "3.21.1"
SCRIPT = Path(__file__).parent / "llama_cpp" / "answers.mjs"
MAX_TOKENS = 24
quiet = {"log": lambda *_: None}


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The node_modules folder holding node-llama-cpp, and node itself, or a failure that says how to get them."""
    candidates = [os.environ.get("NODE_LLAMA_CPP_MODULES"), PROJECT / ".cache/node-llama-cpp/node_modules"]
    how = (f"these tests run llama.cpp from the npm package {NODE_LLAMA_CPP}@{NODE_LLAMA_CPP_VERSION}: "
           "`make setup-llama-cpp`, or export NODE_LLAMA_CPP_MODULES=<a node_modules folder holding it>")
    if shutil.which("node") is None:
        pytest.fail(f"node not found on PATH; {how}", pytrace=False)
    for folder in filter(None, candidates):
        manifest = Path(folder) / NODE_LLAMA_CPP / "package.json"
        if manifest.is_file():
            version = json.loads(manifest.read_text())["version"]
            if version != NODE_LLAMA_CPP_VERSION:
                pytest.fail(f"{manifest}: version {version}, the tests pin {NODE_LLAMA_CPP_VERSION}; {how}", pytrace=False)
            return Path(folder)
    pytest.fail(f"{NODE_LLAMA_CPP} not found in {', '.join(map(str, filter(None, candidates)))}; {how}", pytrace=False)


def llama_cpp(node_modules: Path, runs: list[dict], tmp_path: Path) -> list[list[dict]]:
    """Each run's results ({"model": FILE, "items": [...]}, see answers.mjs), from one node process."""
    request = tmp_path / "llama_cpp_request.json"
    request.write_text(json.dumps({"node_modules": str(node_modules), "max_tokens": MAX_TOKENS, "runs": runs}))
    result = subprocess.run(["node", str(SCRIPT), str(request)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [run["results"] for run in json.loads(result.stdout)["runs"]]


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"]
# A random model's next-token distribution is nearly flat: after a few tokens, llama.cpp's 16-bit
# activations can flip a near-tie. The first tokens of two prompts already run every weight.
FAMILY_TOKENS = 3


def test_llama_cpp_continues_like_transformers_for_every_family(node_modules, tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(PROMPT)["input_ids"], tokenizer("Where is my parcel? It was due on Monday.")["input_ids"]]
    expected, runs = {}, []
    for family in FAMILIES:
        model = tiny_family_model(family, tokenizer)
        writer.write_gguf(model, tokenizer, tmp_path / f"{family}-F16.gguf", "F16", "tiny")
        same_weights = checks.rounded_like(model, "F16")  # what the F16 file holds, computed in float32
        expected[family] = []
        for ids in prompts:
            with torch.no_grad():
                out = same_weights.generate(torch.tensor([ids]), max_new_tokens=FAMILY_TOKENS, do_sample=False,
                                            pad_token_id=tokenizer.pad_token_id)
            expected[family].append(out[0, len(ids):].tolist())
        runs.append({"model": str(tmp_path / f"{family}-F16.gguf"),
                     "items": [{"ids": ids, "max_tokens": FAMILY_TOKENS} for ids in prompts]})
    answers = llama_cpp(node_modules, runs, tmp_path)
    got = {family: [item["tokens"] for item in run] for family, run in zip(FAMILIES, answers, strict=True)}
    assert got == expected


def test_smollm2_exported_to_gguf_answers_like_the_project_in_llama_cpp(node_modules, real_model, sample_data, tmp_path):
    params = smoke_params(
        tmp_path, real_model, sample_data,
        "data.max_length=256", "data.val_fraction=0.02", "eval.generations=4", f"eval.max_new_tokens={MAX_TOKENS}",
        "train.max_steps=4", "train.micro_batch=2", "train.global_batch=2", "train.learning_rate=3e-3",
        "train.warmup_steps=0", "train.lr_schedule=constant", "lora.dropout=0",
        "tracking.system_metrics=false", "tracking.log_adapter=false", "checkpoint.every_steps=1000",
        "export.gguf_types=[F16,Q8_0]", "export.check_prompts=2", "export.name=smollm2-support",
    )
    data.prepare(params, **quiet)
    train(params, resume="never", **quiet)
    started = time.perf_counter()
    merged, *records = export(params, ["merged", "gguf"], **quiet)
    seconds = time.perf_counter() - started
    f16, q8 = (Path(r["path"]) for r in records)
    assert records[0]["reader"]["passed"] and records[0]["reader"]["max_logit_diff"] <= checks.LOGIT_TOLERANCE

    prompts = [json.loads(line) for line in (Path(params.data.prepared_dir) / "held_out_prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 4 and all("messages" in p for p in prompts)
    model, tokenizer = merged_model(params, "float32")
    # The project's own greedy answers, from the weights the F16 file holds.
    ours = [a["generated"] for a in generate_answers(checks.rounded_like(model, "F16"), tokenizer, prompts, MAX_TOKENS,
                                                     torch.device("cpu"))]
    texts = [prompt_text(tokenizer, p) for p in prompts]
    items = [{"messages": p["messages"]} for p in prompts]
    f16_results, q8_results = llama_cpp(node_modules, [
        {"model": str(f16), "items": items + [{"text": t} for t in texts]}, {"model": str(q8), "items": items}], tmp_path)

    # llama.cpp's tokenizer (the vocabulary, merges and pre-tokenizer in the file) gives the project's ids.
    assert [r["ids"] for r in f16_results[4:]] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    theirs = [r["answer"].strip() for r in f16_results[:4]]
    assert all(ours) and theirs == ours
    q8_answers = [r["answer"].strip() for r in q8_results]
    same = sum(a == b for a, b in zip(q8_answers, ours, strict=True))
    tokens = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ours]
    q8_tokens = [r["tokens"] for r in q8_results]
    prefix = sum(next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                 for a, b in zip(tokens, q8_tokens, strict=True))
    print(f"\nSmolLM2-135M-Instruct, {len(prompts)} held-out prompts, {MAX_TOKENS} tokens, greedy: F16 in llama.cpp "
          f"{len(prompts)}/{len(prompts)} answers identical; Q8_0 {same}/{len(prompts)} identical, "
          f"{prefix}/{sum(map(len, tokens))} answer tokens identical before the first difference; "
          f"F16 written in {records[0]['seconds']:.1f} s ({records[0]['bytes'] / 2**20:,.0f} MiB), "
          f"Q8_0 in {records[1]['seconds']:.1f} s ({records[1]['bytes'] / 2**20:,.0f} MiB); the whole export (merged + "
          f"both GGUFs, with their checks) {seconds:.0f} s; F16 rounding moves logits by up to "
          f"{records[0]['reader']['rounding_effect']:.4f}; merged held-out loss {merged['merged_eval_loss']:.4f}, "
          f"adapter {merged['adapter_eval_loss']:.4f} ({merged['merged_loss_change_pct']:+.2f}%)")
    assert same >= 1  # Q8_0 is lossy, not broken: a broken file answers nothing alike
