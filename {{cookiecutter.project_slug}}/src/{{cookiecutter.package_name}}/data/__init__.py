"""Training data: files of any common shape -> chat template -> masked labels -> packed rows.

The `prepare` stage, one job per module:
  errors    DataError, the one exception users see (`file:line: what`)
  shapes    reading files and checking each record's shape
  chat      rendering a record through the chat template and marking the trained tokens
  packing   best-fit packing of examples into fixed-length rows, planned on lengths alone
  store     tokens and packed rows on disk (numpy files, read memory-mapped)
  prepare   the stage itself: read, tokenize in parallel, split, pack, write; and loading what it wrote
"""

from .chat import CHATML_TEMPLATE, IGNORE, encode, ensure_chat_template, tokenize
from .errors import DataError
from .packing import Packed, RowPlan, build_rows, pack, plan_rows
from .prepare import held_out_prompt, load_prepared, num_processes, prepare, split, validation_records
from .shapes import ROLES, read_examples, read_records, to_messages

__all__ = [
    "CHATML_TEMPLATE", "IGNORE", "ROLES", "DataError", "Packed", "RowPlan", "build_rows", "encode", "ensure_chat_template",
    "held_out_prompt", "load_prepared", "num_processes", "pack", "plan_rows", "prepare", "read_examples", "read_records",
    "split", "to_messages", "tokenize", "validation_records",
]
