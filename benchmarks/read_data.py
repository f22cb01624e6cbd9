"""How fast the generated project reads each kind of data file, and how much memory it takes.

    python benchmarks/read_data.py --project /tmp/bake/support-assistant-fine-tune --records 100000

The project's sample conversations (data/raw/support.jsonl, repeated to `--records`) are
written as JSON Lines, a JSON array, CSV, Parquet and a dataset saved with `save_to_disk`;
each is then read by `data.read_examples` (read, checked, normalised; nothing kept) in a
fresh process, which reports records/s, how much its peak RSS grew while reading (the
reader's own memory) and its peak RSS while reading, with the package and datasets
imported (Linux: the peak is reset through /proc/self/clear_refs after the imports).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

READ = textwrap.dedent("""
    import importlib, sys, time
    data = importlib.import_module(sys.argv[1] + ".data")
    examples = data.read_examples(sys.argv[2])
    import datasets, pyarrow.parquet  # imported before measuring: their size is not the reader's

    def kib(key):
        return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: the peak (VmHWM) starts again from memory now
    before = kib("VmRSS")
    start = time.perf_counter()
    count = sum(1 for _ in examples)
    seconds = time.perf_counter() - start
    print(count, seconds, kib("VmHWM") - before, kib("VmHWM"))
""")


def write_files(sample: Path, records: int, out: Path) -> dict[str, Path]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [line for line in sample.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [json.loads(lines[i % len(lines)]) for i in range(records)]
    files = {"jsonl": out / "data.jsonl", "json": out / "data.json", "csv": out / "data.csv",
             "parquet": out / "data.parquet", "saved dataset": out / "saved"}
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    files["json"].write_text(json.dumps(rows, indent=1), encoding="utf-8")
    with files["csv"].open("w", encoding="utf-8", newline="") as f:
        import csv

        writer = csv.writer(f)
        writer.writerow(["messages"])
        writer.writerows([json.dumps(r["messages"])] for r in rows)
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"])
    datasets.Dataset.from_list(rows).save_to_disk(str(files["saved dataset"]))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a baked project")
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    package = next(p.parent.parent.name for p in (args.project / "src").glob("*/data/shapes.py"))
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(args.project / "data/raw/support.jsonl", args.records, Path(tmp))
        print(f"{args.records:,} conversations of the sample data, read by `data.read_examples`\n")
        print("| file | size | records/s | peak RSS growth while reading | peak RSS while reading |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for kind, path in files.items():
            size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")))
            result = subprocess.run(
                [sys.executable, "-c", READ, package, str(path)], capture_output=True, text=True, check=True,
                env={"PYTHONPATH": str(args.project / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
            )
            count, seconds, grown_kib, peak_kib = result.stdout.split()
            assert int(count) == args.records, result.stdout
            print(f"| {kind} | {size / 2**20:,.1f} MiB | {int(count) / float(seconds):,.0f} | "
                  f"{int(grown_kib) / 1024:,.0f} MiB | {int(peak_kib) / 1024:,.0f} MiB |")


if __name__ == "__main__":
    main()
