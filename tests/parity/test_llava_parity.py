"""LLaVA: logits equal transformers' LlavaForConditionalGeneration on tiny random checkpoints
(CLIP and SigLIP towers, feature layer int or list, default/full strategy, several images per
sample, batches), generation with images equals transformers' generate, and save reopens."""
import json

import pytest
import torch

import ocellus
from ocellus.errors import InputError
from _init import padded, shift_biases_and_norms, spread_init, tiny_llava_towers

IMG = 100


def _reference(vision="clip", layer=-2, select="default", text="llama", tie=False, bias=True, window=None):
    import transformers as tf
    vision_cfg, tc = tiny_llava_towers(vision, text, tie)
    if window is not None:   # a Mistral text model's sliding_window
        tc["sliding_window"] = window
    cfg = tf.LlavaConfig(vision_config=vision_cfg, text_config=tc, image_token_index=IMG,
                         vision_feature_layer=layer, vision_feature_select_strategy=select,
                         multimodal_projector_bias=bias)
    torch.manual_seed(0)
    model = spread_init(tf.LlavaForConditionalGeneration(cfg).eval())   # attention far from uniform (_init.py)
    return shift_biases_and_norms(model)


def _batch(tokens_per_image, images_per_sample=(1, 2), T=30):
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in images_per_sample:
        row = torch.randint(1, 99, (T,), generator=g).tolist()
        for i in range(n):  # an image block at a different place each time
            at = 2 + i * (tokens_per_image + 3)
            row[at:at] = [IMG] * tokens_per_image
        rows.append(row)
    ids, mask = padded(rows)
    pixels = torch.randn(sum(images_per_sample), 3, 32, 32, generator=g)
    return ids, mask, pixels


CASES = [
    dict(vision="clip", layer=-2, select="default"),
    dict(vision="clip", layer=[-3, -1], select="full"),
    dict(vision="siglip", layer=-1, select="full", text="qwen2", tie=True),
    dict(vision="siglip", layer=-2, select="default"),       # transformers drops a real patch here
    dict(vision="clip", layer=-1, select="default", bias=False),   # a projector without biases
]


def _both_and_batch(case, tmp_path):
    """transformers' model, ours loaded from its save, and a left-padded batch with position ids."""
    ref = _reference(**case)
    ref.save_pretrained(tmp_path)
    per_image = 16 + (1 if case["vision"] == "clip" else 0) - (1 if case["select"] == "default" else 0)
    ids, mask, pixels = _batch(per_image)
    return ref, ocellus.load(tmp_path), ids, mask, pixels, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['vision']}-{c['layer']}-{c['select']}-{c.get('bias', 1)}")
def test_logits_equal_transformers(case, tmp_path):
    ref, ours, ids, mask, pixels, pos = _both_and_batch(case, tmp_path)
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
        b = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


def test_a_config_without_the_feature_keys_reads_transformers_defaults(tmp_path):
    """A hand-written config.json may leave vision_feature_layer / _select_strategy out: transformers then reads
    layer -2 with the CLS token dropped, and so must we."""
    ref, _, ids, mask, pixels, pos = _both_and_batch(CASES[0], tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in ("vision_feature_layer", "vision_feature_select_strategy"):
        cfg.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = ocellus.load(tmp_path)
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
        b = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


def test_a_mistral_text_model_is_exact_up_to_its_window_and_refuses_past_it(tmp_path):
    """llava-v1.6-mistral's kind: a Mistral text_config with a sliding window. Up to the window (here the batch's
    62 tokens exactly) attention is full and the logits equal transformers'; one token more, transformers'
    window starts cutting keys, which we do not implement: refused, naming the window."""
    ref, ours, ids, mask, pixels, pos = _both_and_batch(dict(vision="clip", layer=-2, select="default",
                                                             text="mistral", window=62), tmp_path)
    assert ref.config.text_config.sliding_window == 62 and ids.shape[1] == 62 and ours.max_context == 62
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
        b = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)
    longer = torch.cat([ids, ids[:, -1:]], 1)
    with pytest.raises(InputError, match="sliding-window attention past 62 tokens"):
        ours(input_ids=longer, pixel_values=pixels)


def test_generate_with_image_equals_transformers_and_save_reopens(tmp_path):
    import transformers
    ref = _reference()
    ref.save_pretrained(tmp_path / "src")
    ours = ocellus.load(tmp_path / "src")
    ids, mask, pixels = _batch(16, images_per_sample=(1,))
    expected = ref.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=20, do_sample=False)
    assert torch.equal(ours.generate(ids, pixel_values=pixels, max_new_tokens=20), expected)
    ocellus.save(ours, tmp_path / "out")
    again = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, pixel_values=pixels).logits,
                                   ours(input_ids=ids, pixel_values=pixels).logits, atol=1e-5, rtol=1e-5)


def test_placeholder_count_mismatch_is_input_error(tmp_path):
    _reference().save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    ids, _, pixels = _batch(16, images_per_sample=(1, 2))
    with pytest.raises(InputError, match="sample 1"):
        ours(input_ids=ids, pixel_values=pixels[:2])           # sample 1 has 2 image blocks, 1 image left
    with pytest.raises(InputError, match="no pixel_values"):
        ours(input_ids=ids)


def _last_layer_grads(lm):
    layer = lm.layers[-1]
    return [layer.self_attn.q_proj.weight.grad, layer.self_attn.o_proj.weight.grad, layer.mlp.down_proj.weight.grad]


@pytest.mark.parametrize("case", CASES[::2], ids=lambda c: c["vision"])
def test_training_loss_and_gradients_equal_transformers(case, tmp_path):
    """Labels on a ragged few positions per sample (ours runs the last decoder layer only there):
    loss, the gradient reaching the pixels and the last layer's weight gradients equal transformers'."""
    ref, ours, ids, mask, pixels, pos = _both_and_batch(case, tmp_path)
    labels = ids.masked_fill((mask == 0) | (ids == IMG), -100)
    labels[:, 1:].masked_fill_(mask[:, :-1] == 0, -100)            # no target predicted from a padding slot
    labels[0, -12:-6] = -100                                       # a prompt span that is not trained
    labels[1, :-4] = -100                                          # only the answer's last 4 tokens
    grads = []
    for model in (ref, ours):
        px = pixels.clone().requires_grad_()
        loss = model(input_ids=ids, pixel_values=px, attention_mask=mask, position_ids=pos, labels=labels).loss
        loss.backward()
        lm = model.model.language_model if model is ref else model.language_model
        grads.append((loss.detach(), px.grad, *_last_layer_grads(lm)))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
