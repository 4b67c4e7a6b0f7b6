"""MoCo, ALBEF and BLIP resume exactly: their momentum encoders (moved by EMA, never by the optimizer), feature
queues with their pointers and step counters are checkpointed with the trained weights, and MoCo's views follow
from the loader's epoch. Run A trains 4 steps with checkpoints at 2 and 4; run B is a new process (another torch
seed, so every tensor it does not restore differs) that resumes from A's step 2: its final state (parameters,
momentum towers, queues) equals A's. Also: save_trainable_only=false writes the tied word embeddings / MLM head
once and resumes them tied, and the default leaves out only what a stage froze inside its parts."""
import shutil

import pytest
import torch

from ocellus.data.bpe import train_bpe
from ocellus.data.shapes_pairs import shapes_pairs
from ocellus.errors import CheckpointError
from ocellus.train import albef_blip_run, contrastive_run
from ocellus.train.loader import BatchLoader
from ocellus.train.state import read_checkpoint, save_checkpoint, untie
from ocellus.train.trainer import Trainer, TrainConfig, checkpointed_state

pytestmark = pytest.mark.usefixtures("one_thread")

VISION = dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2)
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=24)
DATA = dict(source="shapes", n=8, seed=0, image_size=32, min_objects=1, max_objects=1)
RECIPES = {
    "moco": {"model": {"vision": VISION, "moco": dict(dim=8, queue_size=8, momentum=0.9)}},
    "albef": {"model": {"vision": VISION, "text": TEXT,
                        "align": dict(embed_dim=8, queue_size=8, momentum=0.9, alpha_warmup_steps=3, text_layers=1)}},
    "blip": {"model": {"vision": VISION, "text": TEXT, "align": dict(embed_dim=8, queue_size=8, momentum=0.9,
                                                                     alpha_warmup_steps=3)}},
}


@pytest.fixture(scope="module")
def tok():
    pair = shapes_pairs({"image_size": 32}, 5, 100)
    return train_bpe([pair(i)[1] for i in range(100)], 300, eos_token="<|endoftext|>")


def _trainer(task: str, tok, out, seed: int, **train) -> Trainer:
    """A fresh process's trainer: the model built after torch.manual_seed(seed), 2 batches of 4 an epoch."""
    recipe = {"task": task, "seed": 0, "data": DATA, **RECIPES[task]}
    hooks = contrastive_run if task == "moco" else albef_blip_run
    torch.manual_seed(seed)
    model = hooks.build_model(recipe, tok)
    dataset, collate = hooks.build_dataset(recipe, tok, model)
    cfg = TrainConfig(**{**dict(max_steps=4, lr=1e-2, log_every=1, progress=False, out_dir=str(out)), **train})
    return Trainer(model, BatchLoader(dataset, 4, collate, seed=0), cfg)


@pytest.mark.parametrize("task", ["moco", "albef", "blip"])
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(task, tok, tmp_path):
    a = _trainer(task, tok, tmp_path / "a", seed=0, save_every=2)
    a.fit()
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)     # what a run killed after step 3 leaves behind
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-000002", tmp_path / "b" / "checkpoints" / "step-000002")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step-000002")
    b = _trainer(task, tok, tmp_path / "b", seed=99, save_every=2, resume=True)
    b.fit()
    assert b.step == 4
    want, got = a.model.state_dict(), b.model.state_dict()
    assert want.keys() == got.keys()
    moved = [k for k in want if not torch.allclose(want[k].float(), got[k].float(), rtol=0, atol=1e-6)]
    assert not moved, f"{task}: resumed run differs from the uninterrupted one in {moved[:6]}"
    queue = "queue" if task == "moco" else "queue.image_queue"
    assert want[queue].abs().sum() > 0          # the queue was written, so equal queues say something


TIED = {"albef": "text_encoder.mlm.decoder.weight",                      # the MLM head = the word embeddings
        "blip": "text_decoder.embeddings.word_embeddings.weight"}        # the decoder's = the encoder's


@pytest.mark.parametrize("task", ["albef", "blip"])
def test_full_checkpoints_write_tied_tensors_once_and_resume_them_tied(task, tok, tmp_path):
    """save_trainable_only=false crashed (safetensors refuses tensors that share memory)."""
    a = _trainer(task, tok, tmp_path / "a", seed=0, max_steps=2, save_trainable_only=False)
    a.fit()
    tensors, _, state = read_checkpoint(tmp_path / "a" / "checkpoints" / "step-000002")
    words = "text_encoder.embeddings.word_embeddings.weight"
    assert state["tied"][TIED[task]] == words
    assert tensors.keys() == a.model.state_dict().keys()
    b = _trainer(task, tok, tmp_path / "a", seed=99, max_steps=2, save_trainable_only=False, resume=True)
    assert b.maybe_resume()
    assert b.model.get_parameter(TIED[task]) is b.model.get_parameter(words)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_overlapping_views_are_copied_and_equal_views_tied(tmp_path):
    w = torch.arange(24.0).reshape(6, 4)
    kept, tied = untie({"w": w, "alias": w, "top": w[:3], "bottom": w[3:], "empty": torch.zeros(0), "none": w[:0]})
    assert tied == {"alias": "w"} and set(kept) == {"w", "top", "bottom", "empty", "none"}
    save_checkpoint(tmp_path, 1, {"w": w, "alias": w, "top": w[:3], "bottom": w[3:]}, {"state": {}, "param_groups": []},
                    None, {"data": {}})
    tensors, _, _ = read_checkpoint(tmp_path / "step-000001")
    assert torch.equal(tensors["alias"], w) and torch.equal(tensors["bottom"], w[3:])
    state = tmp_path / "step-000001" / "state.json"
    state.write_text(state.read_text().replace('"alias": "w"', '"alias": "gone"'))
    with pytest.raises(CheckpointError, match="'tied' must map names to tensors"):
        read_checkpoint(tmp_path / "step-000001")


def test_trainable_only_leaves_out_only_what_the_stage_froze(tok, tmp_path):
    t = _trainer("albef", tok, tmp_path, seed=0, stage={"vision": "frozen", "text": "full"})
    model = t.model
    kept = checkpointed_state(model, model.state_dict(), trainable_only=True)
    assert "visual_encoder.embeddings.patch_embedding.weight" not in kept       # frozen by the stage
    assert "visual_encoder_m.embeddings.patch_embedding.weight" in kept         # momentum tower: EMA moves it
    assert {"queue.image_queue", "queue.ptr", "step", "text_encoder.layers.0.attention.query.weight"} <= set(kept)
    assert checkpointed_state(model, model.state_dict(), trainable_only=False).keys() == model.state_dict().keys()


def test_moco_views_are_fresh_each_epoch_and_the_loader_tells_the_epoch(tok):
    recipe = {"task": "moco", "seed": 0, "data": DATA, **RECIPES["moco"]}
    torch.manual_seed(0)
    dataset, collate = contrastive_run.build_dataset(recipe, tok, contrastive_run.build_model(recipe, tok))
    first = dataset[3]
    assert torch.equal(dataset[3], first)             # a visit in the same epoch: the same views
    dataset.set_epoch(1)
    assert not torch.allclose(dataset[3], first)      # the next epoch: new views
    seen = []

    class Recorder(list):
        def set_epoch(self, epoch):
            seen.append(epoch)
    loader = BatchLoader(Recorder(range(8)), 4, lambda rows: rows, seed=0)
    [loader.next_batch() for _ in range(5)]
    assert seen == [0, 0, 1, 1, 2]                    # told before each batch is made
