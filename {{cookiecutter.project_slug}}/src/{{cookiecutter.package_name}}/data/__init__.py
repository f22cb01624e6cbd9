"""Training data: files of any common shape -> chat template -> masked labels -> packed rows.

The `prepare` stage, one job per module:
  errors    DataError, the one exception users see (`file:line: what`)
  readers   reading files (JSONL, JSON array, CSV, Parquet, folders, datasets) record by record
  shapes    detecting, checking and normalising each record's shape (chat, sharegpt, ...)
  preference  the preference shapes (prompt/chosen/rejected, implicit prompt) and each pair rendered
  pairs     `prepare` for preference data: pairs packed side by side into the same row files
  kto       KTO's unpaired records as pairs: each answer beside a mismatched one (the KL estimate), labels beside the rows
  chat      one render and one tokenization per example; trained tokens from character spans
  show      `prepare --show N`: rendered examples with the trained text marked
  packing   best-fit packing of examples into fixed-length rows, planned on lengths alone
  store     tokens and packed rows on disk (numpy files, read memory-mapped)
  prepare   the stage itself: read, tokenize in parallel, split, pack, write; and loading what it wrote

Imports: model (the tokenizer), config, atomic.
"""

from .chat import CHATML_TEMPLATE, IGNORE, encode, ensure_chat_template
from .errors import DataError
from .packing import Packed, RowPlan, build_rows, pack, plan_rows
from .prepare import held_out_prompt, load_prepared, num_processes, prepare, split, validation_records
from .shapes import FORMATS, ROLES, Examples, read_examples, read_records, to_messages

__all__ = [
    "CHATML_TEMPLATE", "FORMATS", "IGNORE", "ROLES", "DataError", "Examples", "Packed", "RowPlan", "build_rows", "encode",
    "ensure_chat_template", "held_out_prompt", "load_prepared", "num_processes", "pack", "plan_rows", "prepare",
    "read_examples", "read_records", "split", "to_messages", "validation_records",
]
