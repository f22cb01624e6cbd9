"""Training data: files of any common shape -> chat template -> masked labels -> packed rows.

The `prepare` stage, one job per module:
  errors    DataError, the one exception users see (`file:line: what`)
  readers   reading files (JSONL, JSON array, CSV, Parquet, folders, datasets) record by record
  shapes    detecting, checking and normalising each record's shape (chat, sharegpt, ...)
  chat      one render and one tokenization per example; trained tokens from character spans
  show      `prepare --show N`: rendered examples with the trained text marked
  packing   best-fit packing of examples into fixed-length rows
  prepare   the stage itself: read, split, tokenize, pack, write; and loading what it wrote
"""

from .chat import CHATML_TEMPLATE, IGNORE, encode, ensure_chat_template
from .errors import DataError
from .packing import Packed, pack
from .prepare import held_out_prompt, load_prepared, prepare, split
from .shapes import FORMATS, ROLES, Examples, read_examples, read_records, to_messages

__all__ = [
    "CHATML_TEMPLATE", "FORMATS", "IGNORE", "ROLES", "DataError", "Examples", "Packed", "encode", "ensure_chat_template",
    "held_out_prompt", "load_prepared", "pack", "prepare", "read_examples", "read_records", "split", "to_messages",
]
