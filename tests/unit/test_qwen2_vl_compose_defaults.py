"""What a Qwen2-VL / Qwen2.5-VL recipe gets for the vision_config fields it leaves out (compose's documented
defaults): Qwen2.5-VL windows of 2 x 2 merged tokens and full attention in the last block only, and an
mrope_section of about a third of the rotary pairs per axis, the temporal one taking the remainder."""
from ocellus.data.tokenizer import Tokenizer
from ocellus.models.families.qwen2_vl import modeling as qwen2_vl


def test_qwen2_5_vl_recipe_defaults(tiny_vlm_parts):
    text = str(tiny_vlm_parts / "text" / "model")
    tok = Tokenizer.from_dir(text)
    spec = {"architecture": "qwen2_5_vl", "llm_from": text,
            "config": {"vision_config": {"depth": 3, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
                                         "patch_size": 8}}}
    model = qwen2_vl.compose(spec, tok)
    vc = model.visual.config
    assert vc.window_size == 2 * 8 * 2                 # 2 x 2 merged groups of 2 x 2 patches of 8 px
    assert vc.fullatt_block_indexes == (2,)            # the last of 3 blocks
    head_dim = model.language_model.config.head_dim
    third = head_dim // 2 // 3
    section = model.hf_config["text_config"]["rope_parameters"]["mrope_section"]
    assert section == [head_dim // 2 - 2 * third, third, third] and sum(section) == head_dim // 2
