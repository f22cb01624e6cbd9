"""A Modelfile for Ollama next to the GGUF file, and the `ollama create` command.

Ollama reads the weights, the tokenizer and the chat template from the GGUF itself; the
Modelfile adds what the GGUF does not say: the tokens that end an answer (`stop`: the chat
template's end of an assistant turn, and eos), greedy decoding (the answers `evaluate`
scored) and the context length training used.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ..atomic import write_text_atomic

PROBE = "Probe answer 7f3a"  # an assistant turn whose end the chat template is asked to render


def stop_tokens(tokenizer) -> list[str]:
    """The special tokens the chat template writes after an assistant's answer, then eos."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": PROBE}], tokenize=False)
    tail = rendered[rendered.rindex(PROBE) + len(PROBE):]
    found = [token for token in tokenizer.all_special_tokens if token and token in tail]
    if tokenizer.eos_token:
        found.append(tokenizer.eos_token)
    return list(dict.fromkeys(found))


def modelfile(gguf_name: str, stops: list[str], context: int) -> str:
    lines = [
        "# Ollama: `ollama create NAME -f Modelfile` in this folder. The chat template comes from the GGUF.",
        f"FROM ./{gguf_name}",
        *(f"PARAMETER stop {json.dumps(token)}" for token in stops),
        "PARAMETER temperature 0",  # greedy, as `evaluate` answered
        f"PARAMETER num_ctx {context}",
    ]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, tokenizer, context: int, name: str) -> dict:
    path = Path(gguf_path).with_name("Modelfile")
    write_text_atomic(path, modelfile(Path(gguf_path).name, stop_tokens(tokenizer), context))
    return {"target": "ollama", "path": str(path), "gguf": str(gguf_path),
            "command": f"cd {shlex.quote(str(path.parent))} && ollama create {shlex.quote(name)} -f Modelfile"}
