"""A tiny, randomly initialised Llama-architecture model for tests, `--smoke` and CI.

Nothing can be trained cheaply on a laptop CPU except something this small, and nothing
needs to be downloaded: the BPE tokenizer is trained on the sample data and the model is a
few hundred thousand random parameters. The result is an ordinary Hugging Face model
directory that `from_pretrained` loads, so every code path is the one a real model takes.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_dir
from .data import CHATML_TEMPLATE, read_examples

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def corpus(data_path: str | Path):
    """Every text of a dataset of any shape `data.format: auto` reads (messages, prompts, texts)."""
    for _, example in read_examples(data_path, "auto"):
        if example["kind"] == "chat":
            for message in example["messages"]:
                yield message["content"]
                for call in message.get("tool_calls", []):
                    yield json.dumps(call["function"], ensure_ascii=False)
        elif example["kind"] == "completion":
            yield example["prompt"]
            yield example["completion"]
        elif example["kind"] in ("pair", "kto"):
            for part in (example["prompt"], example.get("chosen") or example["completion"], example.get("rejected", [])):
                yield from [part] if isinstance(part, str) else (message["content"] for message in part)
        else:
            yield example["text"]


def build_tiny_model(out_dir: str | Path, corpus_path: str | Path, vocab_size: int = 1024, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(corpus_path), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE,
    )

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,  # every linear width a multiple of 32: bitsandbytes 4-bit CPU kernels need it
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        # Wider than the usual 0.02: with LoRA only, the frozen final norm and embedding
        # must already allow peaked output distributions, or the loss can barely fall.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
