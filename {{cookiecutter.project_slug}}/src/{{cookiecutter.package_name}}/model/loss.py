"""The training loss without the full-vocabulary logits.

transformers computes the logits of every token (rows x tokens x vocabulary), upcasts them to
fp32 and differentiates the cross-entropy through them: for Llama-3.1-8B's 128,256-word
vocabulary that is 6.9 GiB at 2 x 2048 tokens and more than the GPU at 80k. Here the output
projection and the cross-entropy run over chunks of the tokens; each chunk's logits live only
while that chunk is computed, and are computed again in backward (activation checkpointing
per chunk) instead of being kept. Per-chunk sums are fp32 and the total is divided by the
trained tokens of the whole global batch, as transformers' loss does with
`num_items_in_batch`: the same loss and the same gradients, in a fraction of the memory.

The preference objectives need each token's log-probability, not one sum: with
`token_logps=True` the same forward returns them, chunk by chunk the same way (logps.py).

When all the tokens fit in one chunk nothing is recomputed: where memory is not the limit
the step is transformers' own computation. Pure PyTorch: CPU and GPU, PEFT LoRA / QLoRA /
DoRA (a LoRA'd or tied output layer included), DDP and FSDP, compiled decoder layers or not.
Liger's fused linear cross-entropy, when installed on a GPU, replaces this (`train.py`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput

IGNORE = -100
IN_CHUNKS = "computes_its_loss_in_chunks"  # set on a model use_chunked_loss patched
# fp32 logits of one chunk: 512 tokens of a 128k vocabulary. Large enough for full-speed
# matmuls on a GPU, small next to the weights.
CHUNK_LOGITS_BYTES = 256 * 2**20
# Configs whose logits are transformed before the loss, or whose loss adds more than the
# cross-entropy (MoE router losses): transformers' own loss is kept for them.
UNSUPPORTED_CONFIG = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_router_logits")


def chunk_tokens(vocab: int, budget_bytes: int | None = None) -> int:
    """Tokens per chunk: as many as keep one chunk's fp32 logits within `budget_bytes`
    (default CHUNK_LOGITS_BYTES)."""
    return max(1, (budget_bytes or CHUNK_LOGITS_BYTES) // (4 * vocab))


def _over_chunks(compute, hidden: torch.Tensor, labels: torch.Tensor, chunk: int, clamp: bool = False) -> list[torch.Tensor]:
    """`compute(hidden states, next-token labels)` over chunks of the flattened tokens, each chunk
    recomputed in backward; one call, nothing recomputed, when the tokens fit in one chunk. Labels
    are shifted as transformers shifts them (token t predicts t + 1); `clamp`: IGNORE becomes id 0."""
    shifted = F.pad(labels, (0, 1), value=IGNORE)[..., 1:].reshape(-1).to(hidden.device)
    shifted = shifted.clamp(min=0) if clamp else shifted
    flat = hidden.reshape(-1, hidden.shape[-1])
    if flat.shape[0] <= chunk:
        return [compute(flat, shifted)]
    # One split (not a slice per chunk): backward assembles the hidden states' gradient once.
    pieces = zip(flat.split(chunk), shifted.split(chunk), strict=True)
    return [checkpoint(compute, h, y, use_reentrant=False) for h, y in pieces]


def chunked_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, vocab: int,
                          num_items_in_batch=None, chunk: int | None = None) -> torch.Tensor:
    """Causal-LM cross-entropy of `head(hidden)` against `labels`, chunk by chunk.

    hidden: (rows, tokens, hidden) final hidden states; labels: (rows, tokens), IGNORE where
    nothing is trained, shifted here as transformers shifts them (token t predicts t + 1).
    Divided by `num_items_in_batch` when given (the global batch's trained tokens), else by
    this batch's trained tokens.
    """

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, ignore_index=IGNORE, reduction="sum")

    total = sum(_over_chunks(chunk_loss, hidden, labels, chunk or chunk_tokens(vocab)))
    if num_items_in_batch is None:
        return total / (labels[..., 1:] != IGNORE).sum().to(total.device)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def chunked_token_logps(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, vocab: int,
                        chunk: int | None = None) -> torch.Tensor:
    """log p(label of token t + 1 | tokens up to t) for every token t, chunk by chunk: (rows, tokens),
    fp32 (fp64 for a float64 model). Where the next label is IGNORE (and at each row's last token)
    the value is that of token id 0: the caller keeps only trained tokens."""

    def chunk_logps(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = head(h)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        # -cross-entropy per token is log p(label), without a log-softmax of every logit kept.
        return -F.cross_entropy(logits, y, reduction="none")

    return torch.cat(_over_chunks(chunk_logps, hidden, labels, chunk or chunk_tokens(vocab), clamp=True)).view(labels.shape)


@dataclass
class TokenLogps(ModelOutput):
    """What the chunked forward returns for `token_logps=True`."""

    token_logps: torch.Tensor | None = None


def supports(config) -> bool:
    return not any(getattr(config, name, None) for name in UNSUPPORTED_CONFIG)


def use_chunked_loss(model, chunk: int | None = None) -> bool:
    """Make a transformers causal LM compute its loss chunk by chunk whenever it is given labels
    (it then returns no logits); without labels it is unchanged. False (and unchanged) for a
    model whose loss is more than the plain cross-entropy of its output layer."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if not supports(config) or model.get_output_embeddings() is None:
        return False
    original = model.forward

    @functools.wraps(original)
    def forward(input_ids=None, labels=None, num_items_in_batch=None, logits_to_keep=0, token_logps=False, **kwargs):
        if labels is None:
            return original(input_ids=input_ids, logits_to_keep=logits_to_keep, **kwargs)
        outputs = model.base_model(input_ids=input_ids, **kwargs)
        if token_logps:
            return TokenLogps(chunked_token_logps(outputs.last_hidden_state, model.get_output_embeddings(), labels,
                                                  config.vocab_size, chunk))
        loss = chunked_cross_entropy(outputs.last_hidden_state, model.get_output_embeddings(), labels,
                                     config.vocab_size, num_items_in_batch, chunk)
        return CausalLMOutputWithPast(loss=loss, logits=None)

    model.forward = forward  # on the instance: PEFT, DDP and FSDP all end up calling it
    setattr(model, IN_CHUNKS, True)  # logps.py looks for it under the wrappers
    return True


def in_chunks(model: torch.nn.Module) -> bool:
    """Does `model` (or the transformers model under its PEFT / DDP / FSDP wrappers) take
    `token_logps=True`, i.e. did `use_chunked_loss` patch it?"""
    return any(getattr(module, IN_CHUNKS, False) for module in model.modules())
