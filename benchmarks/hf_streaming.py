"""Seconds from a recipe's data section to its first batch (issue 22 item 1): a map-style Hugging Face dataset,
whose rows are all converted and checked before step 1 (and written to datasets' arrow cache), against
data.streaming, which reads rows as its batches are made and writes nothing.

    python benchmarks/hf_streaming.py [--rows 20000] [--out /tmp/hf-stream-bench]

The rows are shapes preference pairs (task rm's format: prompt / chosen / rejected + one 48 px PNG each) in one
parquet file, written once under --out; each reader is timed on a fresh arrow cache (--out/cache-<rows>).
"""
from __future__ import annotations

import argparse
import io
import shutil
import time
from pathlib import Path

import datasets

from ocellus.data.shapes import ShapesConfig
from ocellus.train.hf_data import Streamed
from ocellus.train.posttrain import pair_dataset
from ocellus.train.preference import shapes_preference


def write_pairs(path: Path, n: int) -> None:
    cfg = ShapesConfig(seed=21, image_size=48)
    rows = [shapes_preference(cfg, i) for i in range(n)]

    def png(image) -> dict:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}
    datasets.Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "chosen": [r["chosen"] for r in rows],
                                "rejected": [r["rejected"] for r in rows],
                                "images": [[png(im) for im in r["images"]] for r in rows]}).cast_column(
        "images", datasets.List(datasets.Image())).to_parquet(str(path))


def first_batch(path: Path, cache: Path, streaming: bool, batch: int = 16) -> float:
    data = {"source": "hf", "path": str(path), "cache_dir": str(cache)}
    if streaming:
        data.update(streaming=True, shuffle_buffer=64)
    start = time.perf_counter()
    rows = pair_dataset({"task": "rm", "seed": 0, "data": data})
    got = rows.loader(batch, list).next_raw() if isinstance(rows, Streamed) else [rows[i] for i in range(batch)]
    assert len(got) == batch
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/hf-stream-bench"))
    args = ap.parse_args()
    datasets.disable_progress_bars()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"pairs-{args.rows}.parquet"
    if not path.exists():
        write_pairs(path, args.rows)
    for streaming in (False, True):
        cache = args.out / f"cache-{args.rows}-{'stream' if streaming else 'map'}"
        shutil.rmtree(cache, ignore_errors=True)
        seconds = first_batch(path, cache, streaming)
        written = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.exists() else 0
        print(f"{'streaming' if streaming else 'map-style'}: {args.rows} rows ({path.stat().st_size / 2**20:.1f} MiB "
              f"parquet), first batch after {seconds:.2f} s, {written / 2**20:.1f} MiB written to the cache")


if __name__ == "__main__":
    main()
