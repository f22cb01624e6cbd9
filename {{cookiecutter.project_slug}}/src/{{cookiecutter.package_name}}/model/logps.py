"""Log-probabilities of the trained tokens of each packed sequence, and the pairs they make.

A packed row holds sequences one after the other, each restarting its position ids at 0 (the
padding at the end is one more sequence, without trained tokens). A token's log-probability
is that of its label given the tokens before it (token t predicts t + 1), summed per sequence.
Preference rows (data/pairs.py) hold pairs as sequences 2k (chosen) and 2k + 1 (rejected).
Where loss.py's chunked forward is on (training, by default), the log-probabilities come from
it chunk by chunk: a preference step never holds the whole rows x tokens x vocabulary logits.
Here, not in train, because `evaluate` scores held-out pairs with the same computation.
"""

from __future__ import annotations

import torch

from .loss import in_chunks

IGNORE = -100


def sequence_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Which sequence of its row each token belongs to (0, 1, ...)."""
    return (position_ids == 0).long().cumsum(dim=1) - 1


def sequences_per_row(position_ids: torch.Tensor) -> int:
    """Sequences in the longest-packed row, rounded up to whole pairs."""
    count = int((position_ids == 0).sum(dim=1).max())
    return count + count % 2


def sequence_logps(model, batch: dict, sequences: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probabilities, trained tokens) of each sequence: two [rows, sequences] tensors, in
    fp32 (fp64 for a float64 model: its precision is kept, never rounded down)."""
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE
    if in_chunks(model):
        # loss.py's forward: the output layer and log-probabilities chunk by chunk, never every logit at once.
        every = model(**batch, token_logps=True, use_cache=False).token_logps[:, :-1]
    else:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        logits = logits if logits.dtype == torch.float64 else logits.float()
        # Cross-entropy per token is -log p(label); computed without keeping a log-softmax of every logit.
        every = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    token_logps = torch.where(trained, every, torch.zeros_like(every))
    which = sequence_ids(batch["position_ids"])[:, 1:]
    sequences = sequences or sequences_per_row(batch["position_ids"])
    sums = torch.zeros(len(targets), sequences, dtype=every.dtype, device=every.device)
    counts = torch.zeros_like(sums)
    sums = sums.scatter_add(1, which, token_logps)
    counts = counts.scatter_add(1, which, trained.to(sums.dtype))
    return sums, counts


def count_pairs(position_ids: torch.Tensor, labels: torch.Tensor) -> int:
    """Whole pairs in these rows: sequences with trained tokens, two per pair."""
    which = sequence_ids(position_ids)
    has_labels = torch.zeros(len(labels), int(which.max()) + 1, dtype=torch.long)
    has_labels = has_labels.scatter_add(1, which.long(), (labels != IGNORE).long())
    return int((has_labels > 0).sum()) // 2
