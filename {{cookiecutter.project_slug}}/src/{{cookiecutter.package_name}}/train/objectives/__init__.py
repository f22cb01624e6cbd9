"""What a training step optimises, chosen once by `train.objective` (the loop never branches on it):
  preference  the preference objective: policy and reference log-probabilities -> pair loss and rewards
  kto         the KTO objective: unpaired answers labelled desirable or not, against a KL reference point
  reference   reference log-probabilities computed once, stored beside the prepared data, reused

An objective has two methods the step calls:
  items(rows, batch_rows) -> int     what the global batch's loss is divided by (trained tokens, pairs)
  loss(model, batch, micro, items)   -> (this micro-batch's share of the loss, {metric: share of its mean})

The pair losses (model/pair_losses.py) and per-sequence log-probabilities (model/logps.py) live in
model, because `evaluate` scores held-out pairs with the same code.

Imports: model (batches, log-probabilities, pair losses), data (the IGNORE label), config, atomic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ... import data
from ...config import ConfigError
from ...data.kto import load_labels
from .kto import KTOObjective
from .preference import PairObjective


@dataclass
class NextToken:
    """Supervised fine-tuning: cross-entropy on the trained tokens, divided by the global batch's trained tokens."""

    def items(self, rows: dict, batch_rows: list[int]) -> int:
        return int((rows["labels"][batch_rows] != data.IGNORE).sum())

    def loss(self, model, batch: dict, micro: list[int], items: int) -> tuple[torch.Tensor, dict]:
        return model(**batch, use_cache=False, num_items_in_batch=items).loss, {}


def check_data(params, summary: dict | None) -> None:
    """The prepared rows must be what the objective trains on."""
    if summary is None:
        return
    pairs = summary.get("data") == "pairs"
    unpaired = summary.get("data") == "kto"
    if params.train.objective == "kto" and not unpaired:
        raise ConfigError(f"train.objective=kto needs KTO data (prompt/completion/label records), but "
                          f"{params.data.prepared_dir} holds {', '.join(summary.get('shapes', [])) or 'supervised'} examples: "
                          "point data.path at a KTO file and run `prepare`")
    if params.train.objective != "kto" and unpaired:
        raise ConfigError(f"{params.data.prepared_dir} holds KTO records (prompt/completion/label): set train.objective=kto")
    if params.train.objective == "dpo" and not pairs:
        raise ConfigError(f"train.objective=dpo needs preference data (prompt/chosen/rejected records), but "
                          f"{params.data.prepared_dir} holds {', '.join(summary.get('shapes', [])) or 'supervised'} examples: "
                          "point data.path at a preference file and run `prepare`")
    if params.train.objective == "sft" and pairs:
        raise ConfigError(f"{params.data.prepared_dir} holds preference pairs: set train.objective=dpo (or prepare supervised data)")


def build(params, summary: dict | None, unwrap, reference_source=None):
    """The objective of `train.objective`. `reference_source()`: the precomputed reference log-probabilities,
    called only when they are needed (a preference loss with a reference, precomputed or from an init adapter)."""
    check_data(params, summary)
    cfg = params.train
    if cfg.objective == "sft":
        return NextToken()
    if cfg.objective == "kto":
        labels = torch.from_numpy(load_labels(params.data.prepared_dir).astype("int64"))
        objective = KTOObjective(cfg.beta, cfg.desirable_weight, cfg.undesirable_weight, unwrap, labels)
    else:
        objective = PairObjective(cfg.preference_loss, cfg.beta, cfg.simpo_gamma, unwrap)
    if objective.needs_reference and (cfg.precompute_reference or params.model.init_adapter):
        if reference_source is None:
            raise ValueError("precomputed reference log-probabilities are needed but there is no source for them")
        objective.precomputed = reference_source()
    return objective
