"""Run by tests/distributed/test_multiprocess.py, alone or under torchrun: trains the tiny
decoder of tests/unit/test_trainer.py and writes its loss history as JSON."""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_trainer import collate, counting_data, tiny_decoder  # noqa: E402

from ocellus.train.distributed import setup, teardown  # noqa: E402
from ocellus.train.loader import BatchLoader  # noqa: E402
from ocellus.train.trainer import TrainConfig, Trainer  # noqa: E402


def main(strategy: str, global_batch: int, out: str, resume: bool, crash_at: int) -> None:
    info = setup(strategy)
    loader = BatchLoader(counting_data(64), global_batch // info.world_size, collate, seed=5,
                         rank=info.rank, world_size=info.world_size)
    trainer = Trainer(tiny_decoder(0), loader, TrainConfig(
        max_steps=6, lr=3e-3, out_dir=out, progress=False, save_every=3, resume=resume,
        save_trainable_only=False, clip_grad_norm=0.5), dist_info=info)
    if crash_at:
        step = trainer.train_step

        def crashing():
            if trainer.step + 1 == crash_at:
                print(f"CRASH_AT: dying on purpose in step {crash_at}", file=sys.stderr, flush=True)
                raise SystemExit(3)
            return step()
        trainer.train_step = crashing
    history = trainer.fit()
    if info.is_main:
        Path(out, "history.json").write_text(json.dumps([h["loss"] for h in history]))
    teardown()


if __name__ == "__main__":
    strategy, batch, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    main(strategy, batch, out, resume="--resume" in sys.argv, crash_at=int(os.environ.get("CRASH_AT", "0")))
