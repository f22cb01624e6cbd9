"""The `prepare` stage: read, tokenize, split, pack and write `data.prepared_dir`; and load it back.

Built for datasets of any size, in bounded memory:
  0. read and check every record (a bad line stops everything here);
  1. read them again and tokenize them on every core (`data.num_proc`), in file order,
     streaming ids and labels to a token store on disk.
     Both passes split JSON Lines files into runs of lines that each process reads and parses
     itself, so no one process reads every record; other sources are read by the main process;
  2. split train/validation by each record's seeded hash (which needs only their count);
  3. plan the packing of each split from the examples' lengths (best-fit decreasing);
  4. build and write the rows a block at a time, blocks on every core.
The output folder appears whole or not at all; the rows are identical whatever `num_proc` is.
Besides the rows: summary.json (per split, per source file, the examples' token lengths),
lengths.png (their histogram) and held_out_prompts.jsonl. The per-file counts and the lengths
come from what the passes already return (each part's record count, each example's length).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import deque
from contextlib import contextmanager
from itertools import groupby, islice
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..atomic import atomic_dir
from .chat import IGNORE, encode, ensure_chat_template
from .errors import DataError
from .packing import build_rows, packing_stats, plan_rows
from .pairs import is_pairs, prepare_pairs
from .shapes import Examples, Part, read_examples
from .store import RowWriter, TokenStore, load_rows

CHUNK = 256  # records per task a process checks or encodes
# Forked processes start at once and inherit their state; spawned ones (macOS, Windows) import
# the package and get it pickled, once per process: seconds, so they are started only where
# there are several tasks to share.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"
BLOCK_TOKENS = 1 << 21  # row slots built and written at a time (a few tens of MB of buffers)


def num_processes(setting: int | str) -> int:
    """`data.num_proc`: a number, or `auto` = the cores this process may use."""
    if setting != "auto":
        return int(setting)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------ split

def _split_keys(indices: np.ndarray, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each record's position (splitmix64): the split's random order.

    Plain integer arithmetic, so the same on every machine and numpy version.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(indices, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def validation_records(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Positions of the validation records among `n`, in validation order; at least one on each side.

    The records with the smallest keys: a seeded shuffle that needs only their count.
    """
    if n < 2:
        raise DataError(f"need at least 2 records to split train/validation, got {n}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    keys = _split_keys(np.arange(n), seed)
    chosen = np.argpartition(keys, n_val - 1)[:n_val]
    return chosen[np.argsort(keys[chosen])]


def split(records: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split of a list: (train in its order, validation); as `prepare` splits a file."""
    val = validation_records(len(records), val_fraction, seed)
    is_val = np.zeros(len(records), dtype=bool)
    is_val[val] = True
    return [r for r, v in zip(records, is_val, strict=True) if not v], [records[i] for i in val.tolist()]


# ------------------------------------------------------------------ processes

# What each process keeps for its tasks: the examples reader, and for tokenizing the
# tokenizer and settings (set once per process: pickled once, or inherited by fork).
_STATE: dict = {}


def _start_worker(state: dict) -> None:
    """Runs once in each process of the pool."""
    _STATE.clear()
    _STATE.update(state)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if sys.platform == "linux":  # and die with it, even when it is killed outright
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def _processes(num_proc: int, state: dict):
    """A function `run(fn, tasks)` yielding (task, fn(task)) in task order, on `num_proc`
    processes that each hold `state`, taking at most a few tasks ahead of its consumer."""
    if num_proc <= 1:  # right here, in this process
        _STATE.clear()
        _STATE.update(state)
        yield lambda fn, tasks: ((task, fn(task)) for task in tasks)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Each process encodes one example at a time; the tokenizer's own threads would only
    # compete with them (and a fork after they ran prints a warning).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    context = multiprocessing.get_context(START_METHOD)
    pool = ProcessPoolExecutor(num_proc, mp_context=context, initializer=_start_worker, initargs=(state,))
    try:
        # Start them now, before a progress bar starts its thread: a process that forks
        # while other threads run can leave a lock held in the child.
        pool.submit(int).result()

        def run(fn, tasks):
            pending = deque()
            for task in tasks:
                pending.append((task, pool.submit(fn, task)))
                if len(pending) >= 2 * num_proc:
                    task, future = pending.popleft()
                    yield task, future.result()
            while pending:
                task, future = pending.popleft()
                yield task, future.result()

        yield run
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------ check

def _check_part(part: Part) -> tuple[int, str | None]:
    """In a process: (records, None) for a part whose records are all good, else (0, the first
    one's `file:line: what`)."""
    count = 0
    try:
        for _ in _STATE["examples"].part_examples(part):
            count += 1
    except DataError as err:
        return 0, str(err)
    return count, None


def _check(examples: Examples, num_proc: int) -> list[tuple[Part, int]]:
    """Every record read and checked once, before anything is tokenized: each part with its
    record count. JSON Lines files are checked on `num_proc` processes, a run of lines each;
    other sources here, one record at a time. The first bad record in file order stops it."""
    checked: list[tuple[Part, int]] = []
    parts = list(examples.parts(CHUNK))  # one small object per CHUNK lines
    runs = sum(part.lines is not None for part in parts)
    with _processes(min(num_proc, runs), {"examples": examples}) as run, \
            tqdm(desc="check records", unit=" records", file=sys.stderr, mininterval=_refresh()) as bar:
        for whole, group in groupby(parts, key=lambda part: part.lines is None):
            if whole:
                for part in group:
                    count = 0
                    for _ in examples.part_examples(part):
                        count += 1
                        if count % 4096 == 0:
                            bar.update(4096)
                    bar.update(count % 4096)
                    checked.append((part, count))
                continue
            for part, (count, error) in run(_check_part, group):
                if error is not None:
                    raise DataError(error)
                if count:
                    examples.shapes.setdefault(part.source.label, part.shape)
                checked.append((part, count))
                bar.update(count)
    if not sum(count for _, count in checked):
        raise DataError(f"{examples.path}: no records (the dataset is empty)")
    return checked


# ------------------------------------------------------------------ tokenize

def _encode_task(task: tuple[int, int, Part | tuple[list, list], frozenset]):
    """In a process: one task's examples encoded, flat, as (lengths, trained, ids, labels,
    held-out prompts); or, for the first record that cannot be read or encoded, its
    `file:line: what`.

    A task is (position of its first record, records expected, what to read, positions of the
    held-out prompts among them): a part, read here, or (wheres, examples) read by the main
    process. `trained`: per example, its trained tokens after the first (packing never trains
    the first). The prompts: {position: held-out prompt} of the positions asked for.
    """
    first, expected, what, wanted = task
    records = iter(zip(*what, strict=True) if isinstance(what, tuple) else _STATE["examples"].part_examples(what))
    tokenizer, train_on, source = _STATE["tokenizer"], _STATE["train_on"], _STATE["template_source"]
    lengths, ids, labels, prompts = [], [], [], {}
    while True:
        try:
            where, example = next(records)
        except StopIteration:
            break
        except DataError as err:  # reading: the message names its file:line
            return str(err)
        try:
            example_ids, example_labels = encode(tokenizer, example, train_on, template_source=source)
        except DataError as err:
            return f"{where}: {err}"
        if len(example_ids) != len(example_labels):
            raise RuntimeError(f"encode returned {len(example_ids)} ids but {len(example_labels)} labels")
        lengths.append(len(example_ids))
        ids.extend(example_ids)
        labels.extend(example_labels)
        if first + len(lengths) - 1 in wanted:
            prompts[first + len(lengths) - 1] = held_out_prompt(example)
    if len(lengths) != expected:
        return f"{what.source.label}: changed while being prepared ({expected} records, then {len(lengths)}); run `prepare` again"
    lengths = np.array(lengths, dtype=np.int32)
    labels = np.array(labels, dtype=np.int32)
    is_trained = labels != IGNORE
    is_trained[(np.cumsum(lengths) - lengths)[lengths > 0]] = False
    example_of = np.repeat(np.arange(len(lengths)), lengths)
    trained = np.bincount(example_of, weights=is_trained, minlength=len(lengths)).astype(np.int32)
    return lengths, trained, np.array(ids, dtype=np.int32), labels, prompts


def _tasks(examples: Examples, checked: list[tuple[Part, int]], wanted: np.ndarray):
    """The tokenizing tasks of the checked parts, in order: a JSON Lines part is read by the
    process that encodes it; other sources are read here, CHUNK examples at a time. Each task
    is told which of its records' held-out prompts to keep (`wanted`: sorted positions)."""

    def among(first: int, count: int) -> frozenset:
        return frozenset(wanted[np.searchsorted(wanted, first) : np.searchsorted(wanted, first + count)].tolist())

    first = 0
    for part, count in checked:
        if part.lines is not None:
            yield first, count, part, among(first, count)
        else:
            read = 0
            iterator = examples.part_examples(part)
            while chunk := list(islice(iterator, CHUNK)):
                where, example = [where for where, _ in chunk], [example for _, example in chunk]
                yield first + read, len(chunk), (where, example), among(first + read, len(chunk))
                read += len(chunk)
            if read != count:
                raise DataError(f"{part.source.label}: changed while being prepared ({count} records, then {read}); run `prepare` again")
        first += count


# ------------------------------------------------------------------ prepare

def _refresh() -> float:
    """Seconds between progress-bar updates: live on a terminal, every so often in a log file."""
    return 0.5 if sys.stderr.isatty() else 15.0


def prepare(params, tokenizer=None, log=print) -> dict:
    """Tokenize, split and pack `data.path` into `data.prepared_dir`; returns the summary.

    Any bad record stops the stage with `file:line: what` and leaves no output folder.
    """
    cfg = params.data
    # A first pass reads and checks every record, so a bad line is reported before a tokenizer
    # is downloaded (and the progress bar knows the total).
    examples = read_examples(cfg.path, cfg.format)
    states = _file_states(examples)
    checked = _check(examples, num_processes(cfg.num_proc))
    records = sum(count for _, count in checked)
    shapes = sorted(set(examples.shapes.values()))
    log(f"read {records} records from {cfg.path} ({', '.join(shapes)})")
    if tokenizer is None:
        from ..model.loading import load_tokenizer

        tokenizer = load_tokenizer(params.model.base)
    if cfg.format != "text":
        ensure_chat_template(tokenizer)
    if is_pairs(shapes):  # preference data: chosen and rejected side by side (pairs.py)
        return prepare_pairs(params, examples, tokenizer, shapes, validation_records, length_summary, log)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    with atomic_dir(cfg.prepared_dir) as tmp:
        store = TokenStore(tmp / ".tokens")
        trained, prompts = _tokenize(params, tokenizer, store, examples, checked)
        if _file_states(examples) != states:
            raise DataError(f"{cfg.path}: changed while being prepared; run `prepare` again")
        lengths, offsets = store.close()
        # Before packing, which may stop the stage: what the data holds is worth seeing either way.
        files = per_file(examples, checked, lengths, trained, cfg.max_length)
        length_stats = length_summary(lengths, cfg.max_length)
        for entry in files[:FILES_LOGGED]:
            log(_file_line(entry, cfg.max_length))
        if (more := len(files) - FILES_LOGGED) > 0:
            log(f"... and {more} more file{'s' if more > 1 else ''} (summary.json lists every file)")
        log(_lengths_line(length_stats, cfg.max_length))
        plot_lengths(lengths, cfg.max_length, tmp / LENGTHS_PNG, length_stats)
        splits, val = split_and_pack(tmp, store, lengths, offsets, trained, cfg, pad_id, log)
        summary: dict = {"source": str(cfg.path), "records": len(lengths), "format": cfg.format, "shapes": shapes, **splits}
        summary["max_length"] = cfg.max_length
        summary["tokenizer"] = params.model.base
        summary["lengths"] = length_stats
        summary["files"] = files
        store.remove()
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        # The first validation records: the smallest keys overall, as many as there are validation records.
        prompts = prompts[: len(val)]
        (tmp / "held_out_prompts.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts))
    log(f"histogram of tokens per example: {Path(cfg.prepared_dir) / LENGTHS_PNG}")  # once it is there
    return summary


def split_and_pack(folder: Path, store: TokenStore, lengths, offsets, trained, cfg, pad_id: int, log=print):
    """Split the stored examples, pack each split and write its rows into folder/train, folder/val.

    Returns each split's summary figures, and the validation records' positions (in order).
    """
    n = len(lengths)
    val = validation_records(n, cfg.val_fraction, cfg.seed)
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    splits = {}
    for name, chosen in (("train", np.flatnonzero(~is_val)), ("val", val)):
        too_long = lengths[chosen] > cfg.max_length
        no_labels = ~too_long & (trained[chosen] == 0)
        kept = chosen[~too_long & ~no_labels]
        dropped = f"{int(too_long.sum())} longer than data.max_length={cfg.max_length}, {int(no_labels.sum())} with nothing to train on"
        if not len(kept):
            raise DataError(f"{cfg.path}: no usable {name} examples ({dropped})")
        stats = _write_split(folder / name, store, offsets[kept], lengths[kept], trained[kept], cfg.max_length, pad_id,
                             num_processes(cfg.num_proc))
        splits[name] = {**stats, "dropped_too_long": int(too_long.sum()), "dropped_no_labels": int(no_labels.sum())}
        log(f"{name}: {stats['examples']} examples -> {stats['rows']} rows of {cfg.max_length} tokens, "
            f"packing efficiency {stats['packing_efficiency']:.1%}; dropped {dropped}")
    return splits, val


# ------------------------------------------------------------------ what the data holds

LENGTHS_PNG = "lengths.png"
FILES_LOGGED = 20  # a line each in the log; summary.json has them all


def per_file(examples: Examples, checked: list[tuple[Part, int]], lengths, trained, max_length: int) -> list[dict]:
    """Each source file's records, and how many of them are kept or dropped and why (as
    `split_and_pack` drops them). A file's parts are consecutive in `checked`, and its examples
    consecutive in `lengths` and `trained`."""
    files, first = [], 0
    for label, group in groupby(checked, key=lambda checked_part: checked_part[0].source.label):
        count = sum(part_count for _, part_count in group)
        mine = slice(first, first + count)
        first += count
        too_long = lengths[mine] > max_length
        no_labels = ~too_long & (trained[mine] == 0)
        files.append({
            "file": label, "shape": examples.shapes.get(label), "records": count,
            "kept": int(count - too_long.sum() - no_labels.sum()),
            "dropped_too_long": int(too_long.sum()), "dropped_no_labels": int(no_labels.sum()),
            "median_tokens": _percentile(lengths[mine], 50) if count else None,
        })
    return files


def _percentile(lengths, q: float) -> int:
    """The length that q% of the examples are no longer than: always some example's length."""
    return int(np.percentile(lengths, q, method="inverted_cdf"))


def length_summary(lengths, max_length: int) -> dict:
    """Tokens per example (every record, before any is dropped): what to choose data.max_length by."""
    return {"min": int(lengths.min()), "median": _percentile(lengths, 50), "p95": _percentile(lengths, 95),
            "max": int(lengths.max()), "over_max_length": int((lengths > max_length).sum())}


def _file_line(entry: dict, max_length: int) -> str:
    dropped = [f"{entry['dropped_too_long']} longer than data.max_length={max_length}"] if entry["dropped_too_long"] else []
    dropped += [f"{entry['dropped_no_labels']} with nothing to train on"] if entry["dropped_no_labels"] else []
    if not entry["records"]:
        return f"{entry['file']}: no records"
    kept = f"{entry['kept']} kept, dropped {', '.join(dropped)}" if dropped else "all kept"
    return f"{entry['file']} ({entry['shape']}): {entry['records']} records, {kept}; median {entry['median_tokens']} tokens"


def _lengths_line(stats: dict, max_length: int) -> str:
    return (f"tokens per example: min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, max {stats['max']}; "
            f"{stats['over_max_length']} longer than data.max_length={max_length}")


def plot_lengths(lengths, max_length: int, path: Path, stats: dict) -> None:
    """The histogram of tokens per example: those longer than data.max_length (dropped) in red."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    edges = np.histogram_bin_edges(lengths, bins=min(50, int(lengths.max() - lengths.min()) + 1))
    over = lengths > max_length
    # Counted by numpy (matplotlib's own counting takes seconds for millions of examples), stacked
    # so that a bin straddling the limit shows both parts at its true height.
    groups = [(lengths[~over], "tab:blue", f"{int((~over).sum())} within data.max_length={max_length}")]
    groups += [(lengths[over], "tab:red", f"{int(over.sum())} longer: dropped")] if over.any() else []
    axes.hist([edges[:-1]] * len(groups), bins=edges, weights=[np.histogram(g, edges)[0] for g, _, _ in groups],
              stacked=True, color=[c for _, c, _ in groups], label=[label for _, _, label in groups])
    if max_length <= lengths.max() * 1.25:  # the limit in view only when it is near the data
        axes.axvline(max_length, color="tab:red", linestyle="--", linewidth=1)
    axes.set(xlabel="tokens", ylabel="examples",
             title=f"tokens per example: median {stats['median']}, p95 {stats['p95']}, max {stats['max']}")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    try:
        figure.savefig(path)
    finally:  # a full disk stops the stage; the figure is not kept either way
        plt.close(figure)


def _file_states(examples: Examples) -> list[tuple]:
    """Size and modification time of each data file: the passes read the same files or fail."""
    states = []
    for source in examples.sources:
        path = Path(source.path)
        if source.kind not in ("hub", "saved") and path.is_file():
            stat = path.stat()
            states.append((source.path, stat.st_size, stat.st_mtime_ns))
    return states


def _tokenize(params, tokenizer, store: TokenStore, examples: Examples, checked: list[tuple[Part, int]]):
    """Every checked record encoded into `store`, in file order, on `data.num_proc` processes.

    Returns each example's trained tokens (after its first) and the held-out prompts of the
    records with the smallest split keys (the first validation records, once they are counted).
    """
    cfg = params.data
    state = {"examples": examples, "tokenizer": tokenizer, "train_on": cfg.train_on, "template_source": params.model.base}
    total = sum(count for _, count in checked)
    # The held-out prompts are the records of smallest split keys, known from the count alone.
    keys = _split_keys(np.arange(total), cfg.seed)
    k = min(params.eval.generations, total)
    chosen = np.argpartition(keys, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
    wanted = chosen[np.argsort(keys[chosen])]  # in key order: the validation records' order
    trained, prompts = [], {}
    tasks = sum(1 if part.lines is not None else -(-count // CHUNK) for part, count in checked)
    with _processes(min(num_processes(cfg.num_proc), tasks), state) as run, \
            tqdm(desc="tokenize", total=total, unit=" examples", file=sys.stderr, mininterval=_refresh()) as bar:
        for (_, count, _, _), result in run(_encode_task, _tasks(examples, checked, np.sort(wanted))):
            if isinstance(result, str):
                raise DataError(result)
            lengths, chunk_trained, ids, labels, chunk_prompts = result
            store.append(ids, labels, lengths)
            trained.append(chunk_trained)
            prompts.update(chunk_prompts)
            bar.update(count)
    return np.concatenate(trained), [prompts[position] for position in wanted.tolist()]


def _write_split(folder: Path, store: TokenStore, offsets, lengths, trained, max_length: int, pad_id: int, num_proc: int) -> dict:
    """One split's rows planned here, then built and written a block at a time on `num_proc`
    processes (each block in its place: the bytes do not depend on which process wrote it)."""
    plan = plan_rows(lengths, max_length)
    writer = RowWriter(folder, plan.rows, max_length)
    block = max(1, BLOCK_TOKENS // max_length)
    blocks = [(first, min(plan.rows, first + block)) for first in range(0, plan.rows, block)]
    state = {"plan": plan, "writer": writer, "store": store, "offsets": offsets, "lengths": lengths,
             "max_length": max_length, "pad_id": pad_id}
    with _processes(min(num_proc, len(blocks)), state) as run, \
            tqdm(total=plan.rows, desc=f"write {folder.name} rows", unit=" rows", file=sys.stderr, mininterval=_refresh()) as bar:
        for (first, last), _ in run(_write_block, blocks):
            bar.update(last - first)
    return packing_stats(lengths, trained, plan.rows, max_length)


def _write_block(rows: tuple[int, int]) -> None:
    """In a process: rows first..last-1 of the split's plan, built from the token store and written."""
    first, last = rows
    plan, store, offsets, lengths = _STATE["plan"], _STATE["store"], _STATE["offsets"], _STATE["lengths"]

    def read(members):
        return store.read(offsets[members], lengths[members])

    _STATE["writer"].write(first, build_rows(plan, first, last, read, lengths, _STATE["max_length"], _STATE["pad_id"]))


def held_out_prompt(example: dict) -> dict:
    """A validation example cut before its last answer: the prompt and the reference."""
    if example["kind"] == "text":
        words = example["text"].split()
        return {"prompt": " ".join(words[: len(words) // 2]), "reference": " ".join(words[len(words) // 2 :])}
    if example["kind"] == "completion":
        return {"prompt": example["prompt"], "reference": example["completion"]}
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"messages": messages[:last], "reference": messages[last]["content"]}


def load_prepared(prepared_dir: str | Path, name: str):
    """The rows of split `name` ("train" or "val"): int32 tensors over memory-mapped files."""
    return load_rows(Path(prepared_dir) / name)
