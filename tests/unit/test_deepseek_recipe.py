"""recipes/deepseek_tiny_shapes/sft.yaml: task lm builds the DeepSeek-V3 decoder its model.config names,
trains it on shapes chat text (assistant turns only), the loss falls, and the export is a checkpoint
transformers' DeepseekV3ForCausalLM opens with the same logits."""
import json
from pathlib import Path

import torch

import ocellus
from ocellus.models.text.deepseek import DeepseekLM
from ocellus.nn.moe import MoE
from ocellus.train.tasks import load_recipe, run_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "deepseek_tiny_shapes" / "sft.yaml"


def test_the_deepseek_sft_recipe_trains_and_exports_a_transformers_checkpoint(tmp_path):
    import transformers
    out = tmp_path / "sft"
    run_recipe(load_recipe(RECIPE, [f"train.out_dir={out}", "train.max_steps=8", "data.n=160", "train.batch_size=8",
                                    "train.log_every=2", "train.warmup_steps=2", "train.progress=false",
                                    "tokenizer.train_bpe.corpus_n=160"]))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    ours = ocellus.load(out / "model")
    assert isinstance(ours, DeepseekLM) and ours.config.model_type == "deepseek_v3"
    assert [isinstance(layer.mlp, MoE) for layer in ours.layers] == [False, True, True, True]
    ref = transformers.DeepseekV3ForCausalLM.from_pretrained(out / "model").eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-4, rtol=0)
