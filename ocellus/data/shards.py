"""Webdataset-style tar shards, streamed: the data of contrastive pretraining at scale.

    data: {source: shards, urls: "data/shard-{000..003}.tar", shuffle_buffer: 1000, num_workers: 2}

A shard is a tar file; a sample is the members sharing a key (the member name up to the first dot of its
base name): `000017.jpg` + `000017.txt` (the caption) or `000017.json` ({"caption": ...}); an image is
.jpg / .jpeg / .png / .webp. Members are read in tar order with the standard library's `tarfile` in
streaming mode (the webdataset layout, without the package: docs/DATA_FORMATS.md says why).

How a run reads them, all of it seeded and exact:
  - shard split: the sorted shard list is cut once, `shards[rank::world][worker::workers]`: every rank reads
    its own shards, every loader worker of a rank its own part of those (split_shards); a shard belongs to one
    (rank, worker) for the whole run. Fewer shards than ranks x workers is a ConfigError.
  - stream: each (rank, worker) reads its shards in an order reshuffled every epoch and passes the samples
    through a shuffle buffer (a reservoir of shuffle_buffer samples, a seeded draw picks which one leaves);
    the stream loops over epochs without end, so no rank or worker ever runs dry before the others.
  - batches: a worker cuts its stream into batches of batch_size samples; the DataLoader takes one batch from
    each worker in turn. The position is the number of batches the trainer took: worker w has made
    batches // W (+1 when w < batches % W) of them, batch_size samples each, so a resumed run skips exactly
    those samples of each stream (read, not decoded) and restarts the turn at worker batches % W
    (ShardStream.start_batches; train/shard_loader.py saves it in the trainer's checkpoint).
  - bad samples (no image, an image that does not decode, no caption): an InputError naming the shard and the
    key, or with data.skip_bad_samples left out of its batch (the batch is smaller; the position is unchanged)
    and counted.
"""
from __future__ import annotations

import itertools
import json
import logging
import random
import re
import tarfile
from pathlib import Path
from typing import Callable, Iterator

import torch.utils.data as tud

from ocellus.data.bad_samples import BadSample
from ocellus.data.llava_json import _conversation
from ocellus.errors import ConfigError, InputError

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "json")
_BRACE = re.compile(r"\{([^{}]*)\}")


# ---- which shards --------------------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """'a-{000..002}.tar' -> ['a-000.tar', 'a-001.tar', 'a-002.tar'] (zero padding kept); '{x,y}' -> x, y;
    several braces multiply, left to right (webdataset's / bash's brace expansion)."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if len(lo) > 1 and lo.startswith("0") else 0   # {000..003}: zero padded
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [out for choice in choices for out in expand_braces(head + choice + tail)]


def shard_paths(urls) -> list[Path]:
    """data.urls (a brace pattern, a directory of .tar files, or a list of those) -> the shard files, sorted
    and without repeats; a missing one is a ConfigError naming it."""
    items = [urls] if isinstance(urls, str) else list(urls)
    paths: list[Path] = []
    for item in items:
        for name in expand_braces(str(item)):
            p = Path(name).expanduser()
            if p.is_dir():
                found = sorted(p.glob("*.tar"))
                if not found:
                    raise ConfigError(f"data.urls: directory {p} holds no .tar shards")
                paths += found
            elif p.is_file():
                paths.append(p)
            else:
                raise ConfigError(f"data.urls: shard {p} does not exist")
    return sorted(set(paths), key=str)


def split_shards(shards: list, rank: int, world: int, worker: int, workers: int) -> list:
    """The shards (rank, worker) reads: shards[rank::world][worker::workers]. Disjoint over all (rank, worker)
    pairs, together all of them."""
    if len(shards) < world * workers:
        raise ConfigError(f"data.urls names {len(shards)} shards, fewer than ranks x loader workers = {world} x "
                          f"{workers}: each reads shards of its own (lower data.num_workers, or cut more shards)")
    return shards[rank::world][worker::workers]


# ---- reading ---------------------------------------------------------------------------------------
def tar_samples(path: Path) -> Iterator[dict]:
    """The samples of one shard in tar order: {"__key__", "__shard__", ext: bytes, ...}. Members sharing a key
    must be adjacent (webdataset's rule); directories and names starting with '.' or '__' are skipped."""
    current: dict | None = None
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if base.startswith((".", "__")) or "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = member.name[: len(member.name) - len(base)] + stem
                data = tar.extractfile(member).read()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": str(path)}
                current[ext.lower()] = data
    except (tarfile.TarError, OSError) as e:
        raise InputError(f"{path}: cannot read the tar shard ({type(e).__name__}: {e})") from e
    if current is not None:
        yield current


def shuffled(samples: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer: hold `size` samples, yield a random one of them for each new one read, then the rest
    in random order. size 1 keeps the order."""
    buffer: list = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = rng.randrange(size)
        buffer[j], sample = sample, buffer[j]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def stream(shards: list, seed: int, rank: int, worker: int, buffer: int) -> Iterator[dict]:
    """The endless sample stream of one (rank, worker): epoch after epoch, its shards in a seeded order through
    a seeded shuffle buffer. The same arguments give the same stream."""
    for epoch in itertools.count():
        order = list(shards)
        random.Random(f"{seed}-{rank}-{worker}-{epoch}-shards").shuffle(order)
        rng = random.Random(f"{seed}-{rank}-{worker}-{epoch}-buffer")
        empty = True
        for sample in shuffled((s for path in order for s in tar_samples(path)), buffer, rng):
            empty = False
            sample["__epoch__"] = epoch      # which pass this is: MoCo's views are seeded by (key, epoch)
            yield sample
        if empty:
            raise InputError(f"shards {[str(s) for s in shards]} hold no samples")


# ---- decoding --------------------------------------------------------------------------------------
def caption_of(sample: dict) -> str:
    """The caption of a sample: its .txt, or the "caption" (else "text") field of its .json."""
    if "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="strict").strip()
    elif "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError as e:
            raise BadSample("invalid_record", f"its .json is not JSON: {e}") from e
        text = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
        if not isinstance(text, str):
            raise BadSample("invalid_record", "its .json has no string 'caption' or 'text'")
        text = text.strip()
    else:
        raise BadSample("invalid_record", f"no caption (.txt or .json) among its members {sorted(_exts(sample))}")
    if not text:
        raise BadSample("invalid_record", "its caption is empty")
    return text


def image_bytes_of(sample: dict) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise BadSample("missing_image", f"no image ({'/'.join(IMAGE_EXTS)}) among its members {sorted(_exts(sample))}")


def image_of(sample: dict):
    """The sample's image, decoded by data/image.load_image: a missing or corrupt one is a BadSample."""
    from ocellus.data.image import load_image
    try:
        return load_image(image_bytes_of(sample), name=f"image of {sample['__key__']}")
    except BadSample:
        raise
    except InputError as e:
        raise BadSample("bad_image", str(e)) from e


def conversation_of(sample: dict) -> dict:
    """A VLM SFT sample: `key.json` a LLaVA record ({"conversations": [...]}, an `<image>` per image) or a TRL
    row ({"messages": [...]}, an {"type": "image"} part per image); its images the sample's image members, in
    order: `key.png`, or `key.0.png`, `key.1.png`, ... -> {"id", "messages", "images": [bytes]} (the form
    data/llava_json.py makes of a record; the same checks: image count, an assistant turn)."""
    if "json" not in sample:
        raise BadSample("invalid_record", f"no conversation (.json) among its members {sorted(_exts(sample))}")
    try:
        record = json.loads(sample["json"])
    except ValueError as e:
        raise BadSample("invalid_record", f"its .json is not JSON: {e}") from e
    if not isinstance(record, dict) or not ({"conversations", "messages"} & set(record)):
        raise BadSample("invalid_record", "its .json has no 'conversations' (LLaVA) or 'messages' (TRL)")
    numbered = sorted((int(ext.split(".")[0]), ext) for ext in _exts(sample)
                      if ext.split(".")[0].isdigit() and ext.split(".", 1)[-1] in IMAGE_EXTS)
    images = [sample[ext] for _, ext in numbered] or [sample[e] for e in IMAGE_EXTS if e in sample]
    row = record.get("id", sample["__key__"])
    if "messages" in record:
        record = {"id": row, "messages": record["messages"], "images": images}
    else:
        record = {"id": row, "conversations": record["conversations"], "image": images}
    conversation = _conversation(record)
    return {"id": row, "messages": conversation.messages, "images": list(conversation.images)}


def _exts(sample: dict) -> list[str]:
    return [k for k in sample if not k.startswith("__")]


class ImageText:
    """A raw sample -> (pixel_values [3, H, W], caption): the image decoded by data/image.load_image (typed
    errors) and preprocessed with `image_config`. A top-level class, so loader workers can take it."""

    def __init__(self, image_config):
        self.image_config = image_config

    def __call__(self, sample: dict):
        from ocellus.data.image import preprocess
        text = caption_of(sample)
        return preprocess([image_of(sample)], self.image_config)[0], text


# ---- the stream of batches a loader worker makes -----------------------------------------------------
def decode_batch(raws: list, decode: Callable, skip_bad: bool, where_of: Callable) -> dict:
    """Raw samples -> {"items": [decode(raw)], "skipped": [(where, reason, message)]}: a bad sample (an
    InputError) raises naming where_of(raw), or with skip_bad is left out and listed. Every stream's batches
    (tar shards here, HF streaming in data/hf_stream.py) are made by this."""
    items, skipped = [], []
    for raw in raws:
        try:
            items.append(decode(raw))
        except InputError as e:
            if not skip_bad:
                raise InputError(f"{where_of(raw)}: {e} (data.skip_bad_samples: true leaves such samples out)") from e
            skipped.append((where_of(raw), getattr(e, "reason", "invalid_sample"), str(e)))
    if not items:
        raise InputError(f"every sample of a batch of {len(raws)} is bad, the last {skipped[-1][0]}: {skipped[-1][2]}")
    return {"items": items, "skipped": skipped}


def batches_made(batches: int, worker: int, workers: int) -> int:
    """How many of the first `batches` batches worker `worker` made (the DataLoader takes them in turn)."""
    return batches // workers + (1 if worker < batches % workers else 0)


class ShardStream(tud.IterableDataset):
    """The batches of one rank, a torch IterableDataset: each loader worker
    reads its shards (split_shards), skips the samples of the batches already taken (start_batches), and yields
    {"items": [decoded samples], "skipped": [(where, reason, message)]} for every batch_size raw samples.
    Physical worker i plays logical worker (start_batches + i) % workers, so the DataLoader's turn, which starts
    at worker 0, continues where the saved run stopped."""

    def __init__(self, shards: list, batch_size: int, decode: Callable, *, seed: int = 0, buffer: int = 1,
                 rank: int = 0, world: int = 1, workers: int = 1, start_batches: int = 0, skip_bad: bool = False):
        self.shards, self.batch_size, self.decode = list(shards), batch_size, decode
        self.seed, self.buffer, self.rank, self.world = seed, buffer, rank, world
        self.workers, self.start_batches, self.skip_bad = max(1, workers), start_batches, skip_bad
        split_shards(self.shards, rank, world, 0, self.workers)   # enough shards: said before any worker starts

    def logical_worker(self, physical: int) -> int:
        return (self.start_batches + physical) % self.workers

    def batches(self, physical: int = 0) -> Iterator[dict]:
        worker = self.logical_worker(physical)
        mine = split_shards(self.shards, self.rank, self.world, worker, self.workers)
        samples = stream(mine, self.seed, self.rank, worker, self.buffer)
        done = batches_made(self.start_batches, worker, self.workers) * self.batch_size
        samples = itertools.islice(samples, done, None)          # read, not decoded: exact and cheap
        while True:
            yield decode_batch(list(itertools.islice(samples, self.batch_size)), self.decode, self.skip_bad,
                               lambda raw: f"{raw['__shard__']}, sample {raw['__key__']!r}")

    def __iter__(self) -> Iterator[dict]:
        info = tud.get_worker_info()
        return self.batches(info.id if info is not None else 0)
