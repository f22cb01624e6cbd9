"""Read a written GGUF file back, by other code than the code that wrote it.

  file_problems    gguf's GGUFReader: every tensor name is one llama.cpp's loader knows for the
                   architecture (gguf's MODEL_TENSORS table, not the name map the writer used),
                   the tensors every block needs are there, the vocabulary fills the embedding,
                   the chat template and eos are the tokenizer's
  reader_agreement transformers' own GGUF loader (`from_pretrained(..., gguf_file=...)`, which
                   undoes llama.cpp's q/k order and Gemma's norm offset itself) against the merged
                   model, on the same token ids: logits and greedy next tokens

Tolerance (F16, BF16): the reference is the merged model with its weights rounded to the file's
type by torch, so both sides compute with the same numbers through the same kernels; what is left
is float32 summation order and Gemma's `+1` on float32 norms, orders of magnitude below
LOGIT_TOLERANCE. A wrong or swapped tensor, an unpermuted q/k projection or a transposed weight
moves logits by whole units. Q8_0 is lossy by design: its figures (largest logit change, share
of positions whose greedy token is unchanged) are reported; the check only asks the greedy token
to agree on at least Q8_0_AGREEMENT of the positions, which a broken file (near chance) cannot,
while a tiny random model's flat distributions flip some of theirs under 8-bit rounding.
"""

from __future__ import annotations

from pathlib import Path

import gguf

LOGIT_TOLERANCE = 1e-4  # F16 / BF16, absolute, against the merged model rounded to the file's type
Q8_0_AGREEMENT = 0.5  # share of positions whose greedy next token survives Q8_0
# What every block of every supported family holds (llama.cpp's names, without the block number).
BLOCK_TENSORS = ("attn_q", "attn_k", "attn_v", "attn_output", "attn_norm", "ffn_gate", "ffn_up", "ffn_down")


def field_value(reader: gguf.GGUFReader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def known_tensor_names(arch: gguf.MODEL_ARCH, blocks: int) -> set[str]:
    names = set()
    for tensor in gguf.MODEL_TENSORS[arch]:
        template = gguf.TENSOR_NAMES[tensor]
        for block in range(blocks) if "{bid}" in template else [None]:
            base = template.format(bid=block)
            names |= {f"{base}.weight", f"{base}.bias"}
    return names


def file_problems(path: Path, tokenizer) -> list[str]:
    """What is wrong with the file for llama.cpp, as its reader sees it (empty: nothing)."""
    reader = gguf.GGUFReader(path)
    arch_name = field_value(reader, "general.architecture")
    archs = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch_name not in archs:
        return [f"general.architecture {arch_name!r} is not an architecture llama.cpp knows"]
    blocks = field_value(reader, f"{arch_name}.block_count") or 0
    names = {tensor.name for tensor in reader.tensors}
    problems = [f"tensor {name!r} is not a name llama.cpp's {arch_name} loader reads"
                for name in sorted(names - known_tensor_names(archs[arch_name], blocks))]
    needed = {"token_embd.weight", "output_norm.weight"}
    needed |= {f"blk.{block}.{part}.weight" for block in range(blocks) for part in BLOCK_TENSORS}
    problems += [f"tensor {name!r} is missing" for name in sorted(needed - names)]
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    tokens = field_value(reader, "tokenizer.ggml.tokens") or []
    if embedding is not None and len(tokens) != int(embedding.shape[-1]):
        problems.append(f"{len(tokens)} tokens for {int(embedding.shape[-1])} embedding rows")
    template = field_value(reader, "tokenizer.chat_template")
    if not template:
        problems.append("no chat template (tokenizer.chat_template)")
    elif template != tokenizer.chat_template:
        problems.append("the chat template differs from the tokenizer's")
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    if eos is None:
        problems.append("no end-of-sequence token (tokenizer.ggml.eos_token_id): generation would not stop")
    elif eos != tokenizer.eos_token_id:
        problems.append(f"eos token id {eos}, the tokenizer's is {tokenizer.eos_token_id}")
    return problems


def rounded_like(model, kind: str):
    """A float32 copy of `model` whose matrices are rounded to the file's type (F16, BF16) by torch."""
    import copy

    import torch

    reference = copy.deepcopy(model).float()
    dtype = {"F16": torch.float16, "BF16": torch.bfloat16}.get(kind)
    if dtype is not None:
        with torch.no_grad():
            for parameter in reference.parameters():
                if parameter.ndim > 1:
                    parameter.copy_(parameter.to(dtype).float())
    return reference.eval()


def logits_of(model, token_ids: list[list[int]]) -> list:
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0].float() for ids in token_ids]


def reader_agreement(path: Path, model, kind: str, token_ids: list[list[int]]) -> dict:
    """transformers' GGUF loader against `model` (the merged model): largest logit difference,
    greedy agreement, and whether that is within this type's bar."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32").eval()
    read = logits_of(loaded, token_ids)
    del loaded
    reference = logits_of(rounded_like(model, kind), token_ids)
    exact = logits_of(model.float(), token_ids) if kind != "Q8_0" else reference
    diff = max(float((a - b).abs().max()) for a, b in zip(read, reference, strict=True))
    positions = sum(len(ids) for ids in token_ids)
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(read, reference, strict=True))
    rounding = max(float((a - b).abs().max()) for a, b in zip(reference, exact, strict=True))
    agreement = same / positions
    passed = agreement >= Q8_0_AGREEMENT if kind == "Q8_0" else diff <= LOGIT_TOLERANCE
    return {"max_logit_diff": diff, "greedy_agreement": agreement, "positions": positions,
            "rounding_effect": rounding, "passed": bool(passed),
            "bar": f"greedy agreement >= {Q8_0_AGREEMENT}" if kind == "Q8_0" else f"max |logit diff| <= {LOGIT_TOLERANCE}"}


