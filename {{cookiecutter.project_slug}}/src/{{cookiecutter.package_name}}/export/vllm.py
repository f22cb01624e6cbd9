"""The adapter as vLLM serves it (`--enable-lora`), after checking the rules vLLM loads adapters by.

vLLM (vllm/lora/peft_helper.py, `PEFTHelper.validate_legal`) refuses an adapter with DoRA
(`use_dora`), with `modules_to_save` (whole layers trained besides the LoRA matrices), with a
trained `bias`, or with a rank above `--max-lora-rank`, which takes one of the values of
`MaxLoRARanks` in vllm/config/lora.py (1, 8, 16, 32, 64, 128, 256, 320, 512; default 16).
So an adapter above rank 512 cannot be served as an adapter at all, and a smaller one needs
`--max-lora-rank` at the next allowed value at or above its rank.

`problems()` reads an adapter_config.json, `planned_problems()` the same rules from params.yaml
before training (`plan` and `train` warn with them). No torch here: `plan` imports this module.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from ..atomic import atomic_dir

# vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16


def max_lora_rank(rank: int) -> int | None:
    """The `--max-lora-rank` vLLM needs for an adapter of this rank: the smallest allowed value
    at or above it (None above 512: no value vLLM accepts is large enough)."""
    return next((allowed for allowed in ALLOWED_MAX_LORA_RANKS if allowed >= rank), None)


def problems(config: dict) -> list[str]:
    """Why vLLM would refuse an adapter with this adapter_config.json, one sentence per rule broken."""
    found = []
    if config.get("use_dora"):
        found.append("DoRA (use_dora: true): vLLM serves plain LoRA adapters only")
    if config.get("modules_to_save"):
        found.append(f"modules_to_save {config['modules_to_save']}: vLLM serves LoRA matrices only, not whole trained layers")
    if config.get("bias", "none") != "none":
        found.append(f"bias {config['bias']!r}: vLLM refuses adapters that train biases (bias must be 'none')")
    ranks = [int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())]
    if max_lora_rank(max(ranks)) is None:
        found.append(f"rank {max(ranks)}: above {ALLOWED_MAX_LORA_RANKS[-1]}, the largest --max-lora-rank vLLM accepts "
                     f"({', '.join(map(str, ALLOWED_MAX_LORA_RANKS))})")
    return found


def planned_problems(params) -> list[str]:
    """The same rules, read from params.yaml: what the adapter `train` will write would break."""
    return problems({"use_dora": params.model.method == "dora", "r": params.lora.r})


def planned_warning(params) -> str | None:
    """One warning for `plan` and `train` when export.targets has vllm and the adapter will break a rule."""
    if "vllm" not in params.export.targets:
        return None
    found = planned_problems(params)
    if not found:
        return None
    return ("export.targets includes vllm, but vLLM will refuse this adapter: " + "; ".join(found)
            + ". `export --target vllm` will write a merged model instead (vLLM serves that as an ordinary model); "
            "change model.method / lora.r now to serve it as an adapter.")


def adapter_config(adapter_dir: Path) -> dict:
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))


def serve_command(base: str, adapter_dir: Path, name: str, rank: int) -> str:
    """The exact `vllm serve` line for the base model with this adapter."""
    return shlex.join(["vllm", "serve", base, "--enable-lora", "--lora-modules", f"{name}={adapter_dir}",
                       "--max-lora-rank", str(max_lora_rank(rank))])


def merged_serve_command(model_dir: Path, name: str) -> str:
    return shlex.join(["vllm", "serve", str(model_dir), "--served-model-name", name])


def export_adapter(adapter_dir: Path, out_dir: Path, base: str, name: str) -> dict:
    """Copy the adapter (weights, config, tokenizer) to out_dir; the record says how to serve it."""
    config = adapter_config(adapter_dir)
    rank = max([int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())])
    with atomic_dir(out_dir) as tmp:
        for path in Path(adapter_dir).iterdir():
            if path.is_file():
                shutil.copy2(path, tmp / path.name)
    return {
        "target": "vllm",
        "path": str(out_dir),
        "rank": rank,
        "max_lora_rank": max_lora_rank(rank),
        "command": serve_command(base, Path(out_dir).resolve(), name, rank),
    }
