"""The tokenizer inside a GGUF file: tokens, their types, merges, special ids, chat template.

llama.cpp tokenizes by itself, so the GGUF must say which tokenizer it is:
  gpt2   byte-level BPE (SmolLM2, Qwen2/Qwen3, Llama 3, the tiny test model), with a named
         pre-tokenizer: the regex that splits text before BPE (`tokenizer.ggml.pre`)
  llama  SentencePiece-style BPE with byte fallback (Mistral, Gemma), read by gguf's LlamaHfVocab
The pre-tokenizer is recognised from tokenizer.json's own description of it; one that is not
recognised stops the export (a GGUF with the wrong one tokenizes some text differently, silently).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gguf

from ..data import DataError

# Pre-tokenizers by what tokenizer.json says, mapped to llama.cpp's names for them.
_DIGITS_THEN_BYTES = "smollm"  # Sequence[Digits(individual), ByteLevel(regex)]: SmolLM / SmolLM2
_BYTES = "gpt-2"  # ByteLevel with GPT-2's regex alone
_SPLIT_PATTERNS = {  # a Split pre-tokenizer's regex, told apart by how it cuts numbers
    r"\p{N}{1,3}": "llama-bpe",  # Llama 3: numbers in groups of up to three digits
    r"\p{N}|": "qwen2",  # Qwen2 / Qwen3: one digit at a time
}


class VocabError(DataError):
    """The tokenizer cannot be described to llama.cpp."""


def _byte_level_pre(pre: dict | None) -> str | None:
    if not pre:
        return None
    kind = pre.get("type")
    if kind == "ByteLevel":
        return _BYTES if pre.get("use_regex", True) else None
    if kind == "Sequence":
        parts = pre.get("pretokenizers", [])
        kinds = [p.get("type") for p in parts]
        if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
            return _DIGITS_THEN_BYTES
        if kinds and kinds[0] == "Split" and "ByteLevel" in kinds:
            pattern = parts[0].get("pattern", {}).get("Regex", "")
            return next((name for marker, name in _SPLIT_PATTERNS.items() if marker in pattern), None)
    return None


def describe(tokenizer) -> dict:
    """What the GGUF needs to know about `tokenizer` (a transformers fast tokenizer)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return {"model": "llama", "pre": "default"}
    pre = _byte_level_pre(spec.get("pre_tokenizer"))
    if model.get("type") == "BPE" and pre:
        return {"model": "gpt2", "pre": pre}
    raise VocabError(
        f"the tokenizer ({model.get('type')} model, pre-tokenizer {json.dumps(spec.get('pre_tokenizer'))[:200]}) is not one "
        "the GGUF export can describe to llama.cpp (byte-level BPE with the GPT-2, SmolLM, Llama 3 or Qwen2 pre-tokenizer, "
        "or SentencePiece-style BPE with byte fallback)"
    )


def _added_types(tokenizer) -> dict[int, int]:
    types = {}
    for token_id, added in tokenizer.added_tokens_decoder.items():
        types[token_id] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    return types


def _gpt2_tokens(tokenizer, vocab_rows: int) -> tuple[list[str], list[int], list[str]]:
    by_id = {i: t for t, i in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).items()}
    added = _added_types(tokenizer)
    tokens, types = [], []
    # Rows past the tokenizer's last id (embeddings padded to a round size) get placeholder tokens.
    for token_id in range(vocab_rows):
        if token_id in by_id:
            tokens.append(by_id[token_id])
            types.append(added.get(token_id, gguf.TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("merges", [])
    return tokens, types, [m if isinstance(m, str) else " ".join(m) for m in merges]


def _spm_tokens(tokenizer, vocab_rows: int) -> tuple[list[bytes], list[float], list[int]]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        vocab = gguf.LlamaHfVocab(Path(tmp))
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
    for token_id in range(len(tokens), vocab_rows):
        tokens.append(f"[PAD{token_id}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    return tokens, scores, types


def _adds(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether encoding plain text adds this special token (first or last)."""
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0 if first else -1] == token_id


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_rows: int) -> dict:
    """Write the tokenizer into the GGUF's metadata; returns what was written (for the checks)."""
    kind = describe(tokenizer)
    writer.add_tokenizer_model(kind["model"])
    writer.add_tokenizer_pre(kind["pre"])
    if kind["model"] == "gpt2":
        tokens, types, merges = _gpt2_tokens(tokenizer, vocab_rows)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    else:
        tokens, scores, types = _spm_tokens(tokenizer, vocab_rows)
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id,
               "unk": tokenizer.unk_token_id}
    for name, token_id in special.items():
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    writer.add_add_bos_token(_adds(tokenizer, special["bos"], first=True))
    writer.add_add_eos_token(_adds(tokenizer, special["eos"], first=False))
    if not tokenizer.chat_template:
        raise VocabError("the tokenizer has no chat template: a GGUF without one cannot hold a conversation in llama.cpp")
    writer.add_chat_template(tokenizer.chat_template)
    return {**kind, "tokens": len(tokens), "eos": special["eos"], "chat_template": tokenizer.chat_template}
