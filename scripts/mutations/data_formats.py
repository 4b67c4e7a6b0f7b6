"""The data the field uses (issue 22.1): Hugging Face datasets read as training rows (data/hf_dataset.py) and
webdataset-style tar shards streamed over ranks and loader workers with an exact resume position
(data/shards.py, train/shard_loader.py). The slips here keep every shape right and train fine: a rank reading
another rank's shards, a resumed run replaying or skipping samples, an image landing with another row's text,
a preference row taken for a prompt. The killers compare against the split, the uninterrupted run and the
records themselves."""
from mutations import Mutation

HF = "tests/unit/test_data_formats.py"
ROWS = f"{HF}::test_rows_keep_their_own_images_when_reordered_or_skipped"
FORMAT = f"{HF}::test_format_is_detected_from_the_columns"
SHARDS = "tests/unit/test_shards.py"
SPLIT = f"{SHARDS}::test_split_over_ranks_and_workers_is_disjoint_and_complete"
RANKS = f"{SHARDS}::test_ranks_read_disjoint_shards_and_workers_their_own_part"
RESUME = f"{SHARDS}::test_a_resumed_loader_continues_with_the_next_unseen_samples"
BUFFER = f"{SHARDS}::test_shuffle_buffer_is_a_seeded_permutation"

MUTATIONS = [
    # -- shard split by rank / worker
    Mutation(name="shards: every rank reads every shard", file="ocellus/data/shards.py",
             old="    return shards[rank::world][worker::workers]", new="    return shards[worker::workers]",
             tests=[SPLIT, RANKS]),
    Mutation(name="shards: split by worker before rank", file="ocellus/data/shards.py",
             old="    return shards[rank::world][worker::workers]", new="    return shards[worker::workers][rank::world]",
             tests=[SPLIT]),
    # -- resume position
    Mutation(name="shards: resume skips the batches of all workers in each worker", file="ocellus/data/shards.py",
             old="done = batches_made(self.start_batches, worker, self.workers) * self.batch_size",
             new="done = self.start_batches * self.batch_size", tests=[RESUME]),
    Mutation(name="shards: batches a worker made, off by one", file="ocellus/data/shards.py",
             old="(1 if worker < batches % workers else 0)", new="(1 if worker <= batches % workers else 0)",
             tests=[RESUME]),
    Mutation(name="shards: resumed workers restart the turn at worker 0", file="ocellus/data/shards.py",
             old="return (self.start_batches + physical) % self.workers", new="return physical % self.workers",
             tests=[RESUME]),
    Mutation(name="shards: resume accepts a checkpoint of another configuration", file="ocellus/train/shard_loader.py",
             old="            if state.get(field) != self._fingerprint()[field]:",
             new="            if False and state.get(field) != self._fingerprint()[field]:", tests=[RESUME]),
    # -- shuffle buffer
    Mutation(name="shards: shuffle buffer overwrites instead of swapping", file="ocellus/data/shards.py",
             old="        buffer[j], sample = sample, buffer[j]", new="        buffer[j] = sample", tests=[BUFFER]),
    # -- image-text pairing of HF rows
    Mutation(name="hf: rows read from the table, ignoring the dataset's index mapping (select / shuffle)",
             file="ocellus/data/hf_dataset.py", old="        return self._arrow[i].to_pylist()[0]",
             new="        return self.ds.data.slice(i, 1).to_pylist()[0]", tests=[ROWS]),
    Mutation(name="hf: k-th kept row read as row k after skipped rows", file="ocellus/data/hf_dataset.py",
             old="        return self.make(self.kept[k])", new="        return self.make(k)", tests=[ROWS]),
    # -- format detection
    Mutation(name="hf: preference rows detected as prompt rows (they have a prompt column too)",
             file="ocellus/data/hf_dataset.py", old='FORMATS = ("llava", "messages", "preference", "prompt")',
             new='FORMATS = ("llava", "messages", "prompt", "preference")', tests=[FORMAT]),
]
