"""Wiring properties of the vision-language bridges that an overfit test cannot see: a colour question
is answered just as well with a gate that was never closed, an image read by every later token, features
written one slot off, or patches merged in the wrong groups. Each test checks the property exactly."""
import pytest
import torch

from _overfit import COLOURS, _tok, encode, flamingo, llava, shape_image


@pytest.fixture(scope="module")
def tok(tiny_vlm_parts):
    return _tok(tiny_vlm_parts)


def test_flamingo_gates_start_closed_get_gradient_and_train(tiny_vlm_parts, tok, tmp_path):
    """tanh(0) = 0: a fresh model is exactly the decoder, whatever the images; yet every gate gets a
    gradient at step 1 (d/d alpha of tanh(alpha) * y is y), sits in an optimizer group, and moves."""
    from ocellus.train.loader import BatchLoader
    from ocellus.train.trainer import TrainConfig, Trainer
    composed = flamingo(tiny_vlm_parts, tok)
    model = composed.model.eval()
    batch = encode(composed, tok, list(COLOURS))
    rolled = encode(composed, tok, list(COLOURS)[::-1])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        bare = model.language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.equal(model(**inputs).logits, bare)                       # [B, T, V]
        assert torch.equal(model(**{**inputs, "pixel_values": rolled["pixel_values"]}).logits, bare)

    gates = {n: p for n, p in model.named_parameters() if n.endswith(("attn_gate", "ff_gate"))}
    assert len(gates) == 2 * len(model.gated_cross_attn) > 0
    trainer = Trainer(model, BatchLoader([batch], 1, lambda r: r[0], shuffle=False),
                      TrainConfig(max_steps=1, lr=1e-2, out_dir=str(tmp_path), progress=False,
                                  stage=composed.stage))
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in optimised for p in gates.values()), "a gate is in no optimizer group: it can never open"
    model.train()
    model(**batch).loss.backward()
    for name, p in gates.items():
        assert p.grad is not None and float(p.grad.abs()) > 0, f"{name} gets no gradient at its closed start"
    model.zero_grad(set_to_none=True)
    trainer.train_step()
    assert all(float(p.detach().abs()) > 0 for p in gates.values()), "a gate stayed shut after an optimizer step"


def test_flamingo_text_reads_only_the_latest_image(tiny_vlm_parts, tok):
    """Section 2.3's masking, at the first gated block (before decoder layer 0, so no self-attention has
    mixed positions yet): in `a b <image> c d <image> e f` the tokens before the first image read no
    image, <image>1 .. d read image 1 only, <image>2 .. f read image 2 only."""
    composed = flamingo(tiny_vlm_parts, tok)
    model = composed.model.eval()
    with torch.no_grad():
        for block in model.gated_cross_attn.values():
            block.attn_gate.fill_(1.0)       # open, so the block's output shows what each token read
            block.ff_gate.fill_(0.0)
    img, text = model.image_token_id, tok.encode(" a red shape", add_special_tokens=False)[:2]
    ids = torch.tensor([[*text, img, *text, img, *text]])                    # [1, 8]
    first, second = 2, 5                                                     # positions of the <image> tokens
    outs = []
    model.gated_cross_attn["0"].register_forward_hook(lambda m, a, out: outs.append(out))
    pictures = {name: composed.processor.image_inputs([shape_image(name, i)])[0]["pixel_values"]
                for i, name in enumerate(COLOURS)}
    with torch.no_grad():
        for one, two in (("red", "blue"), ("green", "blue"), ("red", "yellow")):
            model(input_ids=ids, pixel_values=torch.cat([pictures[one], pictures[two]]))
    base, new_first, new_second = (o[0] for o in outs)                         # each [8, D]

    def same(a, b):
        return torch.allclose(a, b, atol=1e-6)
    assert same(base[:first], new_first[:first]) and same(base[:first], new_second[:first])  # no image yet
    for t in range(first, second):                                           # image 1's span
        assert not same(base[t], new_first[t]) and same(base[t], new_second[t]), t
    for t in range(second, ids.shape[1]):                                    # image 2's span
        assert same(base[t], new_first[t]) and not same(base[t], new_second[t]), t


def test_early_fusion_decoder_sees_features_exactly_at_the_placeholders(tiny_vlm_parts, tok):
    """LLaVA: the decoder's input embeddings are the projected image features at the <image> positions
    (in order, per sample) and the token embeddings everywhere else."""
    composed = llava(tiny_vlm_parts, tok)
    model = composed.model.eval()
    batch = encode(composed, tok, ["red", "blue"])
    seen = {}
    model.language_model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    with torch.no_grad():
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"])
        feats, counts = model.image_tokens(batch["pixel_values"])            # [2 * 65, D]
        text = model.language_model.embed_tokens(batch["input_ids"])        # [2, T, D]
    embeds, is_image = seen["inputs_embeds"], batch["input_ids"] == model.image_token_id
    assert counts == [65, 65] and int(is_image.sum()) == 130
    assert torch.equal(embeds[is_image], feats)
    assert torch.equal(embeds[~is_image], text[~is_image])


def test_qwen2_vl_merger_reads_2x2_neighbourhoods():
    """The processor orders Qwen2-VL's patches so that rows 4k..4k+3 are one 2x2 block of neighbours
    (row-major inside the block, blocks row-major over the image): the merger's plain reshape relies on it."""
    from ocellus.data.image_tiling import qwen2vl_patchify
    p, h, w = 2, 4, 6                                                         # a 4 x 6 grid of 2 px patches
    rows, cols = torch.meshgrid(torch.arange(h * p), torch.arange(w * p), indexing="ij")
    pixels = torch.stack([rows // p, cols // p, torch.zeros_like(rows)]).float()   # [3, H, W]: patch (row, col)
    patches, grid = qwen2vl_patchify(pixels, patch_size=p, temporal_patch_size=2, merge_size=2)
    assert grid == (1, h, w) and patches.shape == (h * w, 3 * 2 * p * p)
    where = patches.view(h * w, 3, -1)[:, :2, 0].long().tolist()             # each row's (patch row, patch col)
    want = [[2 * bi + di, 2 * bj + dj] for bi in range(h // 2) for bj in range(w // 2) for di in (0, 1) for dj in (0, 1)]
    assert where == want


def test_pixel_shuffle_tokens_are_2x2_windows_in_row_major_order():
    """InternVL's pixel shuffle: token k is the window at (k // (w/2), k % (w/2)) of a
    4 x 4 grid read row-major, its channels the window's patches (row offset, column offset) in order; a
    column-major token order would give the decoder a transposed image."""
    from ocellus.models.connectors.pixel_shuffle import pixel_shuffle
    h = 4
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
    x = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()[None]      # [1, 16, 2]: (row, col)
    out = pixel_shuffle(x, 2).view(h * h // 4, 4, 2).long().tolist()             # [4 tokens, 4 patches, 2]
    want = [[[2 * bi + di, 2 * bj + dj] for di in (0, 1) for dj in (0, 1)] for bi in range(2) for bj in range(2)]
    assert out == want
