"""Per-sequence log-probabilities of packed rows: model/logps.py (evaluate scores pairs with it too)."""

from ...model.logps import IGNORE, count_pairs, sequence_ids, sequence_logps, sequences_per_row

__all__ = ["IGNORE", "count_pairs", "sequence_ids", "sequence_logps", "sequences_per_row"]
