"""`torchrun --nproc_per_node 2 -m ocellus.cli train RECIPE distributed=fsdp` trains and exports: the full
tensors are gathered to rank 0 and the export reopens with the logits of the same recipe trained in one
process on the same samples: 2 processes x batch 2 average their two batch losses' gradients as one process
does with 2 accumulation steps of batch 2 (the samples differ in length, so one batch of 4 would weigh
tokens differently)."""
from pathlib import Path

import pytest
import torch
from _launch import launch

import ocellus
from ocellus.train.run import build_tokenizer
from ocellus.train.tasks import load_recipe

SCRIPT = Path(__file__).with_name("cli_train.py")
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "llava_tiny_shapes" / "text_pretrain.yaml"
SMALL = ["train.max_steps=2", "train.progress=false", "train.log_every=1", "train.warmup_steps=0", "data.n=64",
         "model.config.num_hidden_layers=2", "model.config.hidden_size=32", "model.config.intermediate_size=64",
         "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "train.lr=1e-2",
         "train.batch_size=2"]


def _train(tmp_path, name, nproc, tokenizer, extra=()):
    out = tmp_path / name
    args = [str(RECIPE), f"tokenizer={tokenizer}", f"train.out_dir={out}", f"train.grad_accum={3 - nproc}", *SMALL,
            *extra, *(["distributed=fsdp"] if nproc > 1 else [])]
    proc, log = launch(SCRIPT, args, nproc)
    assert proc.returncode == 0, log
    return out / "model"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The recipe's own BPE on a small corpus, trained once (two ranks would each write it)."""
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(load_recipe(RECIPE, ["tokenizer.train_bpe.corpus_n=200"]), path)
    return path / "tokenizer"


@pytest.mark.parametrize("extra", [(), ("train.stage.llm.mode=lora", "train.stage.llm.rank=4")], ids=["full", "lora"])
def test_fsdp_export_reopens_with_the_single_process_logits(tmp_path, tokenizer, extra):
    two = ocellus.load(_train(tmp_path, "two", 2, tokenizer, extra))
    one = ocellus.load(_train(tmp_path, "one", 1, tokenizer, extra))
    ids = torch.randint(0, one.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(two(ids).logits, one(ids).logits, rtol=1e-4, atol=1e-5)
