"""GGUF export on tiny random models of each family, read back by transformers' own GGUF loader.

The families differ where a converter goes wrong: Llama/Mistral need their q/k rows permuted
for llama.cpp's rope, Qwen2 has attention biases, Qwen3 per-head q/k norms and a head size of
its own, Gemma stores its norms as weight + 1. Each model is random (only shapes and layouts
matter here), its norms and biases moved off their defaults so a lost offset or bias shows.
The reference is the same model with its matrices rounded to the file's type by torch: the
loader must give the same logits (see export/checks.py for the tolerance). And every way a
file can be wrong that these checks exist for is made on purpose and caught.
"""

import gguf as gguf_package
import pytest
import torch
from transformers import AutoTokenizer

from {{ cookiecutter.package_name }}.export import checks, gguf_vocab
from {{ cookiecutter.package_name }}.export import gguf as writer

PROMPT = "My invoice is wrong, I was charged twice for order 12345."


def tiny_family_model(family: str, tokenizer):
    """A random model of `family` with the tiny tokenizer's vocabulary, a few thousand parameters."""
    import transformers

    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    configs = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
        "mistral": ("MistralConfig", "MistralForCausalLM", {"tie_word_embeddings": False}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": False}),
        # transformers' GGUF reader takes Qwen3's head size from its own default (128, every Qwen3's).
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 128, "num_attention_heads": 2, "num_key_value_heads": 1}),
        # Gemma 2's reader defaults: query scale 256 = head size, soft-capping 50 / 30.
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 256, "query_pre_attn_scalar": 256,
                                                         "num_attention_heads": 2, "num_key_value_heads": 1}),
        "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),
    }
    config_name, model_name, extra = configs[family]
    config = getattr(transformers, config_name)(**{**common, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:  # norms (around 1, or 0 for Gemma) and biases (0): off their defaults
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    return [tokenizer(PROMPT)["input_ids"], tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                                                          add_generation_prompt=True)["input_ids"]]


# gemma (Gemma 1): transformers has no GGUF reader for it; its file is checked by gguf's reader and,
# in test_export_llama_cpp.py, run by llama.cpp itself.
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma2"])
@pytest.mark.parametrize("kind", ["F16", "BF16"])
def test_transformers_reads_back_the_logits_of_each_family(family, kind, tokenizer, prompt_ids, tmp_path):
    model = tiny_family_model(family, tokenizer)
    path = tmp_path / f"tiny-{kind}.gguf"  # a name without "mistral": transformers reads that as another architecture
    record = writer.write_gguf(model, tokenizer, path, kind, "tiny")
    assert record["arch"] == {"mistral": "llama"}.get(family, family)
    assert checks.file_problems(path, tokenizer) == []
    agreement = checks.reader_agreement(path, model, kind, prompt_ids)
    assert agreement["passed"] and agreement["max_logit_diff"] <= checks.LOGIT_TOLERANCE, agreement
    # The rounding to 16 bits itself moves logits (so the reference above is not the float32 model by accident).
    assert agreement["rounding_effect"] > 10 * checks.LOGIT_TOLERANCE


def test_q8_0_is_smaller_and_close(tokenizer, prompt_ids, tmp_path):
    model = tiny_family_model("llama", tokenizer)
    f16 = writer.write_gguf(model, tokenizer, tmp_path / "t-F16.gguf", "F16")
    q8 = writer.write_gguf(model, tokenizer, tmp_path / "t-Q8_0.gguf", "Q8_0")
    assert q8["bytes"] < 0.65 * f16["bytes"]
    agreement = checks.reader_agreement(tmp_path / "t-Q8_0.gguf", model, "Q8_0", prompt_ids)
    assert agreement["passed"] and 0 < agreement["max_logit_diff"] < 0.5, agreement


def test_gemma_file_is_what_llama_cpp_reads(tokenizer, tmp_path):
    model = tiny_family_model("gemma", tokenizer)
    path = tmp_path / "gemma-F16.gguf"
    writer.write_gguf(model, tokenizer, path, "F16")
    assert checks.file_problems(path, tokenizer) == []
    reader = gguf_package.GGUFReader(path)
    norm = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    # Gemma's RMSNorm scales by (1 + weight): the file holds weight + 1 for llama.cpp's plain scale.
    expected = model.model.layers[0].input_layernorm.weight.detach().numpy() + 1
    assert abs(norm.data - expected).max() < 1e-6


def test_the_tokenizer_is_embedded(tokenizer, tmp_path):
    model = tiny_family_model("llama", tokenizer)
    path = tmp_path / "t-F16.gguf"
    writer.write_gguf(model, tokenizer, path, "F16")
    reader = gguf_package.GGUFReader(path)

    def value(key):
        return reader.fields[key].contents()

    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    tokens = value("tokenizer.ggml.tokens")
    assert len(tokens) == len(tokenizer) and tokens[tokenizer.eos_token_id] == "<|im_end|>"
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert value("tokenizer.chat_template") == tokenizer.chat_template
    assert value("tokenizer.ggml.token_type")[tokenizer.eos_token_id] == gguf_package.TokenType.CONTROL
    assert len(value("tokenizer.ggml.merges")) > 100


# Every way a file can be wrong that the checks are there for, made on purpose.
def _renamed(tensors):
    for name, data in tensors:
        yield ("blk.0.attn_qq.weight" if name == "blk.0.attn_q.weight" else name), data


def _transposed(tensors):
    for name, data in tensors:
        yield name, (data.T.copy() if name == "blk.1.attn_output.weight" else data)


def test_a_wrong_tensor_name_is_caught(tokenizer, tmp_path, monkeypatch):
    model = tiny_family_model("llama", tokenizer)
    original = writer.gguf_tensors
    monkeypatch.setattr(writer, "gguf_tensors", lambda *a: _renamed(original(*a)))
    writer.write_gguf(model, tokenizer, tmp_path / "bad.gguf", "F16")
    problems = checks.file_problems(tmp_path / "bad.gguf", tokenizer)
    assert problems == ["tensor 'blk.0.attn_qq.weight' is not a name llama.cpp's llama loader reads",
                        "tensor 'blk.0.attn_q.weight' is missing"]


@pytest.mark.parametrize("breakage", ["unpermuted q/k", "transposed attention output"])
def test_wrong_weights_are_caught_by_the_reader(breakage, tokenizer, prompt_ids, tmp_path, monkeypatch):
    model = tiny_family_model("llama", tokenizer)
    if breakage == "unpermuted q/k":
        monkeypatch.setitem(writer.FAMILIES, "llama", writer.Family(gguf_package.MODEL_ARCH.LLAMA, permute_qk=False))
    else:
        original = writer.gguf_tensors
        monkeypatch.setattr(writer, "gguf_tensors", lambda *a: _transposed(original(*a)))
    writer.write_gguf(model, tokenizer, tmp_path / "bad.gguf", "F16")
    assert checks.file_problems(tmp_path / "bad.gguf", tokenizer) == []  # names and shapes are all fine...
    agreement = checks.reader_agreement(tmp_path / "bad.gguf", model, "F16", prompt_ids)
    assert not agreement["passed"] and agreement["max_logit_diff"] > 100 * checks.LOGIT_TOLERANCE  # ...the numbers are not


@pytest.mark.parametrize("missing", ["chat template", "eos"])
def test_a_missing_chat_template_or_eos_is_caught(missing, tokenizer, tmp_path, monkeypatch):
    model = tiny_family_model("llama", tokenizer)
    method = {"chat template": "add_chat_template", "eos": "add_eos_token_id"}[missing]
    monkeypatch.setattr(gguf_package.GGUFWriter, method, lambda *a: None)
    writer.write_gguf(model, tokenizer, tmp_path / "bad.gguf", "F16")
    problems = checks.file_problems(tmp_path / "bad.gguf", tokenizer)
    assert len(problems) == 1 and missing.split()[-1] in problems[0], problems


def test_a_tokenizer_without_chat_template_is_refused_before_writing(tokenizer, tmp_path):
    model = tiny_family_model("llama", tokenizer)
    bare = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    with pytest.raises(gguf_vocab.VocabError, match="no chat template"):
        writer.write_gguf(model, bare, tmp_path / "x.gguf", "F16")


def test_unsupported_models_are_refused_with_the_reason(tokenizer, tmp_path):
    model = tiny_family_model("llama", tokenizer)
    model.config.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(writer.GGUFError, match="rope scaling 'yarn'"):
        writer.write_gguf(model, tokenizer, tmp_path / "x.gguf", "F16")
    model.config.model_type = "falcon"
    with pytest.raises(writer.GGUFError, match="model type 'falcon'"):
        writer.write_gguf(model, tokenizer, tmp_path / "x.gguf", "F16")
