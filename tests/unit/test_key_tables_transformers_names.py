"""The families' key tables (models/families/*/checkpoint.py) name a checkpoint's tensors as the reference does.

Where the reference is cheap to build, it is transformers itself: a tiny random model saved with save_pretrained,
opened by ocellus.load (strictly: every tensor used or dropped on purpose) and written back by ocellus.save, must
hold exactly the tensor names transformers wrote (a tied head left out as transformers leaves it out). Where
building it is heavy (Qwen2-VL, BLIP-2, Salesforce's xGen-MM), the names are written out from the hub
checkpoints' own index files. Plus: the buffers older exports carry that each table drops, BLIP-2's fused qkv
layout, and two config checks of the families' writers / readers."""
import pytest
import torch

import ocellus
from ocellus.errors import ConfigError
from ocellus.hub.safetensors_io import checkpoint_files
from tests.parity._init import tiny_llava_towers

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
              patch_size=8)
BERT = dict(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40)
DEEPSEEK = dict(vocab_size=97, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                num_attention_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=6,
                n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, max_position_embeddings=64,
                q_lora_rank=None, n_routed_experts=4, eos_token_id=None, bos_token_id=None)


def _reference(name: str):
    import transformers as tf
    torch.manual_seed(0)
    if name == "CLIPVisionModel":
        return tf.CLIPVisionModel(tf.CLIPVisionConfig(**VISION))
    if name == "SiglipVisionModel":                                    # with its attention-pooling head
        return tf.SiglipVisionModel(tf.SiglipVisionConfig(**VISION))
    if name == "CLIPTextModel":
        return tf.CLIPTextModel(tf.CLIPTextConfig(vocab_size=61, hidden_size=32, intermediate_size=48,
                                                  num_hidden_layers=2, num_attention_heads=4,
                                                  max_position_embeddings=12, eos_token_id=2))
    if name in ("BertModel", "BertForMaskedLM", "BertForPreTraining"):
        return getattr(tf, name)(tf.BertConfig(**BERT))
    if name == "BertForMaskedLM-untied":                              # its decoder written as a tensor of its own
        return tf.BertForMaskedLM(tf.BertConfig(**BERT, tie_word_embeddings=False))
    if name == "DeepseekV2ForCausalLM-tied":
        return tf.DeepseekV2ForCausalLM(tf.DeepseekV2Config(**DEEPSEEK, tie_word_embeddings=True))
    if name == "LlavaForConditionalGeneration":
        vision, text = tiny_llava_towers("clip", "llama", tie=False)
        return tf.LlavaForConditionalGeneration(tf.LlavaConfig(vision_config=vision, text_config=text,
                                                               image_token_index=100))
    raise KeyError(name)


def _names(path, tower_level: bool = False) -> set[str]:
    """The tensor names of a checkpoint dir. tower_level: a ViT tower's `vision_model.` level taken out, the one
    place we write on purpose what transformers 4.x and the hub checkpoints wrote (every reader takes both; the
    tower's docstring, families/vit/checkpoint.py) and transformers 5 no longer does."""
    from safetensors import safe_open
    out = set()
    for f in checkpoint_files(path):
        with safe_open(f, framework="pt") as st:
            out |= set(st.keys())
    return {n.replace("vision_model.", "", 1) for n in out} if tower_level else out


@pytest.mark.parametrize("name", ["CLIPVisionModel", "SiglipVisionModel", "CLIPTextModel", "BertModel",
                                  "BertForMaskedLM", "BertForMaskedLM-untied", "BertForPreTraining",
                                  "DeepseekV2ForCausalLM-tied",
                                  "LlavaForConditionalGeneration"])
def test_a_transformers_checkpoint_reopens_and_saves_under_its_own_names(name, tmp_path):
    _reference(name).save_pretrained(tmp_path / "hf")
    ocellus.save(ocellus.load(tmp_path / "hf"), tmp_path / "ours")
    theirs, ours = _names(tmp_path / "hf"), _names(tmp_path / "ours", tower_level=True)
    assert ours == theirs, f"only ours: {sorted(ours - theirs)[:6]}; only transformers': {sorted(theirs - ours)[:6]}"


def test_tables_write_the_hub_checkpoints_names():
    from ocellus.models.families.blip2.checkpoint import BLIP2_KEYS
    from ocellus.models.families.llava.checkpoint import LLAVA_KEYS
    from ocellus.models.families.qwen2_vl.checkpoint import QWEN2_VL_KEYS
    from ocellus.models.families.xgen_mm.checkpoint import XGEN_MM_KEYS
    written = {   # ours -> the name in the hub checkpoint's model.safetensors.index.json
        LLAVA_KEYS: {      # llava-hf/llava-1.5-7b-hf (the tower keeps its vision_model. level there)
            "vision_tower.layers.0.self_attn.o_proj.weight":
                "vision_tower.vision_model.encoder.layers.0.self_attn.out_proj.weight",
            "vision_tower.pre_layernorm.weight": "vision_tower.vision_model.pre_layrnorm.weight",
            "multi_modal_projector.linear_1.weight": "multi_modal_projector.linear_1.weight",
            "language_model.layers.0.self_attn.q_proj.weight": "language_model.model.layers.0.self_attn.q_proj.weight",
            "language_model.lm_head.weight": "language_model.lm_head.weight"},
        QWEN2_VL_KEYS: {   # Qwen/Qwen2-VL-2B-Instruct
            "language_model.layers.0.self_attn.q_proj.weight": "model.layers.0.self_attn.q_proj.weight",
            "language_model.embed_tokens.weight": "model.embed_tokens.weight",
            "language_model.norm.weight": "model.norm.weight",
            "language_model.lm_head.weight": "lm_head.weight",
            "visual.blocks.0.attn.qkv.weight": "visual.blocks.0.attn.qkv.weight",
            "merger.mlp.0.weight": "visual.merger.mlp.0.weight"},
        BLIP2_KEYS: {      # Salesforce/blip2-opt-2.7b (transformers' Blip2ForConditionalGeneration)
            "qformer.query_tokens": "query_tokens",
            "qformer.layernorm.weight": "qformer.layernorm.weight",
            "qformer.layers.0.attention.query.weight": "qformer.encoder.layer.0.attention.attention.query.weight",
            "qformer.layers.0.crossattention.key.weight":
                "qformer.encoder.layer.0.crossattention.attention.key.weight",
            "qformer.layers.0.ffn_query.intermediate.weight": "qformer.encoder.layer.0.intermediate_query.dense.weight",
            "qformer.layers.0.ffn.output.dense.weight": "qformer.encoder.layer.0.output.dense.weight",
            "vision_tower.layers.0.self_attn.o_proj.weight": "vision_model.encoder.layers.0.self_attn.projection.weight",
            "language_projection.weight": "language_projection.weight"},
        XGEN_MM_KEYS: {    # Salesforce's modeling_xgenmm.py: PerceiverResampler layers are [attention, FeedForward],
            # FeedForward = Sequential(LayerNorm, Linear, GELU, Linear)
            "packer.perceiver.latents": "vlm.vision_tokenizer.latents",
            "packer.perceiver.layers.0.attn.to_q.weight": "vlm.vision_tokenizer.layers.0.0.to_q.weight",
            "packer.perceiver.layers.0.ff.norm.weight": "vlm.vision_tokenizer.layers.0.1.0.weight",
            "packer.perceiver.layers.0.ff.mlp.fc1.weight": "vlm.vision_tokenizer.layers.0.1.1.weight",
            "packer.perceiver.layers.0.ff.mlp.fc2.weight": "vlm.vision_tokenizer.layers.0.1.3.weight",
            "language_model.lm_head.weight": "vlm.lang_model.lm_head.weight"},
    }
    for keys, table in written.items():
        for ours, theirs in table.items():
            assert keys.to_theirs(ours) == theirs and keys.to_ours(theirs) == ours, ours


def test_each_table_drops_the_buffers_older_exports_carry():
    from ocellus.models.families.bert.checkpoint import bert_keys
    from ocellus.models.families.llava_next.checkpoint import LLAVA_NEXT_KEYS
    from ocellus.models.families.vit.checkpoint import VISION_KEYS
    carried = [   # non-persistent buffers transformers 4.x wrote into checkpoints: rebuilt on the fly, never read
        (VISION_KEYS, "vision_model.embeddings.position_ids"), (VISION_KEYS, "embeddings.position_ids"),
        (bert_keys("bert."), "bert.embeddings.token_type_ids"), (bert_keys(""), "embeddings.position_ids"),
        (LLAVA_NEXT_KEYS, "language_model.model.layers.0.self_attn.rotary_emb.inv_freq"),
        (LLAVA_NEXT_KEYS, "vision_tower.vision_model.embeddings.position_ids")]
    for keys, name in carried:
        assert keys.dropped(name), name


def test_blip2_fuses_q_k_v_along_the_output_axis():
    # BLIP-2's ViT stores one [3D, D] qkv: q's rows, then k's, then v's (transformers' Blip2Attention.qkv)
    from ocellus.models.families.blip2.checkpoint import from_checkpoint, to_checkpoint
    layer = "vision_model.encoder.layers.0.self_attn"
    q, k, v = (torch.randn(4, 4) for _ in range(3))
    qb, kb, vb = (torch.randn(4) for _ in range(3))
    ours = {f"{layer}.q_proj.weight": q, f"{layer}.k_proj.weight": k, f"{layer}.v_proj.weight": v,
            f"{layer}.q_proj.bias": qb, f"{layer}.k_proj.bias": kb, f"{layer}.v_proj.bias": vb}
    fused = to_checkpoint(ours)
    assert torch.equal(fused[f"{layer}.qkv.weight"], torch.cat([q, k, v]))
    assert torch.equal(fused[f"{layer}.qkv.bias"], torch.cat([qb, kb, vb]))
    back = from_checkpoint(fused)
    assert back.keys() == ours.keys() and all(torch.equal(back[n], t) for n, t in ours.items())


def test_siglip_writer_refuses_projections_or_a_missing_bias():
    from ocellus.models.contrastive.clip import DualEncoder, build_dual_encoder, siglip_config
    from ocellus.models.families.siglip.checkpoint import siglip_hf_config
    vision = dict(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4)
    text = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=12, eos_token_id=2)
    towers = build_dual_encoder("siglip", vision, text)
    siglip_hf_config(towers)
    for dual in (dict(projection_dim=8), dict(logit_bias_init=None)):   # each alone is not a SiglipModel
        with pytest.raises(ConfigError, match="a SiglipModel has no projections and has a logit_bias"):
            siglip_hf_config(DualEncoder(towers.vision_model, towers.text_model, siglip_config(**dual)))


def test_a_unified_config_missing_a_key_names_it():
    from ocellus.models.families.unified.checkpoint import build_from_config
    with pytest.raises(ConfigError, match=r"lacks \['tokenizer', 'image_size'\]"):
        build_from_config({"model_type": "ocellus_unified", "model": {}, "colours": []})
