"""`varlen` attention: PyTorch's variable-length FlashAttention over packed rows.

The FlashAttention kernel runs on CUDA GPUs only, so here it is replaced by a reference that
runs PyTorch's SDPA on each example alone (causal). Everything around the kernel is real:
the example boundaries worked out when the batch is made, the layout the kernel is given,
grouped-query heads, and transformers dispatching to our function.
"""

import pytest
import torch
import torch.nn.functional as F

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.model import attention, loading
from {{ cookiecutter.package_name }}.model.batch import to_device


def reference_varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """What torch.nn.attention.varlen.varlen_attn computes, one example at a time: causal
    (window_size (left, 0)), each token seeing `left` tokens before it (-1: all of them)."""
    left, right = window_size
    assert right == 0, "training needs causal attention"
    assert torch.equal(cu_seq_q, cu_seq_k) and cu_seq_q.dtype == torch.int32
    assert max_q == max_k == int(cu_seq_q.diff().max())
    assert enable_gqa or k.shape[1] == q.shape[1]
    out = torch.empty_like(q)
    for start, end in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist(), strict=True):
        heads_first = [x[start:end].transpose(0, 1) for x in (q, k, v)]
        position = torch.arange(end - start)
        seen = position[None, :] <= position[:, None]  # [query, key]
        if left >= 0:
            seen &= position[None, :] >= position[:, None] - left
        out[start:end] = F.scaled_dot_product_attention(*heads_first, attn_mask=seen, scale=scale, enable_gqa=enable_gqa).transpose(0, 1)
    return out


@pytest.fixture(scope="module")
def packed_rows(tiny_model_dir):
    """Two packed rows of examples of many lengths, padding at the ends."""
    generator = torch.Generator().manual_seed(0)
    lengths = [37, 5, 60, 12, 1, 44, 23, 9, 30, 2]
    examples = [(ids, ids) for ids in (torch.randint(3, 500, (n,), generator=generator).tolist() for n in lengths)]
    packed = data.pack(examples, max_length=128, pad_id=0)
    assert packed.input_ids.shape[0] == 2
    return {"input_ids": packed.input_ids, "labels": packed.labels, "position_ids": packed.position_ids}


def test_example_boundaries_are_those_transformers_would_find(packed_rows):
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    ours = attention.sequence_boundaries(packed_rows["position_ids"].long())
    (cu_q, cu_k), (max_q, _) = prepare_fa_kwargs_from_position_ids(packed_rows["position_ids"].long())
    assert ours["cu_seq_lens_q"].tolist() == cu_q.tolist() == cu_k.tolist()
    assert ours["max_length_q"] == ours["max_length_k"] == int(max_q) == 60
    assert ours["cu_seq_lens_q"][-1] == 2 * 128  # both rows, flattened


@pytest.mark.parametrize("kernel_takes_grouped_heads", [True, False])
def test_varlen_attention_gives_the_loss_and_gradients_of_masked_sdpa(tiny_model_dir, packed_rows, monkeypatch,
                                                                      kernel_takes_grouped_heads):
    """The tiny model has 4 query heads and 2 key/value heads: torch 2.13's kernel takes them
    as they are (enable_gqa), older ones need the key/value heads repeated."""
    from transformers import AttentionInterface, AutoModelForCausalLM

    monkeypatch.setattr(attention, "varlen_attn", reference_varlen_attn)
    monkeypatch.setattr(attention, "_grouped_query_support", lambda: kernel_takes_grouped_heads)
    AttentionInterface.register(attention.VARLEN, attention.varlen_attention_forward)  # as use_varlen does on a GPU

    results = {}
    for name in ("sdpa", attention.VARLEN):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
        model.set_attn_implementation(name)
        batch = to_device(packed_rows, slice(0, 2), torch.device("cpu"), attention.takes_sequence_boundaries(model.config))
        assert ("cu_seq_lens_q" in batch) == (name == attention.VARLEN)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        results[name] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    (sdpa_loss, sdpa_grads), (varlen_loss, varlen_grads) = results["sdpa"], results[attention.VARLEN]
    torch.testing.assert_close(varlen_loss, sdpa_loss, atol=1e-5, rtol=1e-5)
    for name, grad in sdpa_grads.items():
        torch.testing.assert_close(varlen_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_a_sliding_window_is_passed_on_as_transformers_masks_it(monkeypatch):
    """Mistral-style sliding windows: a token sees itself and the window - 1 tokens before it,
    as transformers' own sliding-window mask says."""
    from transformers.masking_utils import sliding_window_causal_mask_function

    monkeypatch.setattr(attention, "varlen_attn", reference_varlen_attn)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=generator) for _ in range(3))
    position_ids = torch.cat([torch.arange(9), torch.arange(3)])[None]
    out, _ = attention.varlen_attention_forward(None, q, k, v, None, sliding_window=4, **attention.sequence_boundaries(position_ids))
    window = sliding_window_causal_mask_function(4)
    for start, length in ((0, 9), (9, 3)):
        index = torch.arange(length)
        seen = window(torch.tensor(0), torch.tensor(0), index[:, None], index[None, :])
        expected = F.scaled_dot_product_attention(*(x[..., start:start + length, :] for x in (q, k, v)), attn_mask=seen)
        torch.testing.assert_close(out[0, start:start + length], expected[0].transpose(0, 1))


def test_varlen_attention_says_what_it_cannot_do():
    q = torch.zeros(1, 4, 8, 16)
    with pytest.raises(ValueError, match="needs the batch's example boundaries"):
        attention.varlen_attention_forward(None, q, q, q, None, position_ids=torch.zeros(1, 8))
    boundaries = attention.sequence_boundaries(torch.arange(8)[None])
    with pytest.raises(ValueError, match="has no softcap, which this model uses"):
        attention.varlen_attention_forward(None, q, q, q, None, softcap=30.0, **boundaries)


def test_varlen_is_refused_where_flash_attention_cannot_run(tiny_model_dir, make_params):
    model = loading.load_base_model(make_params("model.attn_implementation=varlen"), torch.device("cpu"))
    assert model.config._attn_implementation == "sdpa"  # loads with SDPA: evaluation and generation keep it
    with pytest.raises(ConfigError, match="runs on CUDA GPUs only"):
        attention.use_varlen(model, torch.device("cpu"), torch.float32)
    with pytest.raises(ConfigError, match="needs model.dtype bfloat16 or float16"):
        attention.use_varlen(model, torch.device("cuda"), torch.float32)
    model.config.attention_dropout = 0.1
    with pytest.raises(ConfigError, match="has no attention dropout"):
        attention.use_varlen(model, torch.device("cuda"), torch.bfloat16)
