"""scripts/probe_spatial_ideal.py builds the image tokens it says it builds: one token per object carrying its
centre, a 4x4 grid where each object marks the cells over it (its own centre's cell at least) and the rest are
background, positions in the values only for grid+pos; its questions are the "which side" form with their two
answers, position questions in one-object scenes with --lone."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

import ocellus
from ocellus.data.shapes import Obj, Scene, ShapesConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_spatial_ideal.py"
spec = importlib.util.spec_from_file_location("probe_spatial_ideal", SCRIPT)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)
COLOURS = list(ShapesConfig().colours)
# a 10 px red circle in the top-right cell (row 0, col 3: a swapped x / y would put it at row 3, col 0); a 20 px blue square whose box holds one cell centre, (30, 30), its own
SCENE = Scene(48, "white", (Obj("circle", "red", (37, 1, 47, 11)), Obj("square", "blue", (20, 20, 40, 40))))


def _tokens(variant):
    torch.manual_seed(0)
    ideal = probe.IdealTokens(variant, 16, COLOURS)
    with torch.no_grad():
        return ideal, ideal(SCENE, np.random.default_rng(0))


def test_grid_marks_each_object_over_its_cells_and_nothing_else():
    ideal, tokens = _tokens("grid")
    assert tokens.shape == (16, 16)
    red_circle = ideal.colour.weight[COLOURS.index("red")] + ideal.shape.weight[0]
    blue_square = ideal.colour.weight[COLOURS.index("blue")] + ideal.shape.weight[1]
    background = ideal.colour.weight[-1] + ideal.shape.weight[-1]
    want = {3: red_circle, 10: blue_square}          # cells by row-major index: (row 0, col 3); (row 2, col 2)
    for k in range(16):
        cx, cy = (k % 4) * 12 + 6, (k // 4) * 12 + 6
        over_square = 20 <= cx < 40 and 20 <= cy < 40
        expect = want.get(k, blue_square if over_square else background)
        assert torch.allclose(tokens[k], expect), k
    _, with_pos = _tokens("grid+pos")
    moved = (with_pos - tokens).norm(dim=1)
    assert (moved > 0).all() and not torch.allclose(with_pos[0], with_pos[15])


def test_one_token_per_object_carries_its_centre():
    ideal, tokens = _tokens("objects")
    assert tokens.shape == (2, 16)
    for obj in SCENE.objects:
        c, s = COLOURS.index(obj.colour), probe.SHAPES.index(obj.shape)
        xy = torch.tensor([obj.center[0] / 48 - 0.5, obj.center[1] / 48 - 0.5])
        want = ideal.colour.weight[c] + ideal.shape.weight[s] + ideal.where(xy)
        assert any(torch.allclose(t, want) for t in tokens)


def test_questions_are_the_which_side_form_with_their_pair():
    rng, cfg = np.random.default_rng(0), ShapesConfig(image_size=48, min_objects=2, max_objects=4)
    for _ in range(40):
        scene, q, a, pair = probe.question(rng, cfg, "spatial")
        assert " or " in q and a in pair and len(scene.objects) >= 2
        scene, q, a, pair = probe.question(rng, cfg, "position", lone=True)
        assert len(scene.objects) == 1 and a in pair and pair in (("left", "right"), ("top", "bottom"))


def test_2d_positions_put_each_cell_at_its_row_and_column_and_the_text_after():
    import torch
    ids = probe.token_positions("2d", 16, 20)
    assert ids.shape == (3, 20)
    assert ids[:, 6].tolist() == [0, 1, 2] and ids[:, 15].tolist() == [0, 3, 3]        # cell 6: row 1, col 2
    assert ids[:, 16:].tolist() == [[4, 5, 6, 7]] * 3
    assert torch.equal(probe.token_positions("1d", 16, 20), torch.arange(20))



def test_slot_connector_ignores_patch_order_and_writes_each_slots_centroid():
    """grid+slots: K slot tokens whatever order the patches come in (each patch carries its own centre), each
    written with the centroid of what it took: a patch's mass over the slots sums to one (they compete), and the
    slot token is out(state + where(attention-weighted mean of the centres))."""
    torch.manual_seed(0)
    slots = probe.SlotConnector(16, 8, n_slots=3, iters=2)
    x, k = torch.randn(2, 16, 16), torch.arange(16)
    xy = torch.stack([k % 4, k // 4], 1) / 3 - 0.5
    perm = torch.randperm(16)
    with torch.no_grad():
        out = slots(x, xy)
        assert out.shape == (2, 3, 8)
        torch.testing.assert_close(slots(x[:, perm], xy[perm]), out, atol=1e-5, rtol=0)
        torch.testing.assert_close(slots(x[1:], xy), out[1:], atol=1e-5, rtol=0)   # rows apart
        # a centroid written out: the last iteration's weights, recomputed from its slot states
        seen = {}
        slots.where.register_forward_hook(lambda m, i, o: seen.update(centroid=i[0]))
        slots(x, xy)
        h = slots.norm_in(x + slots.pos(xy.expand(2, 16, 2)))
        s = slots.init.expand(2, -1, -1)
        for _ in range(2):
            a = (slots.q(slots.norm_slots(s)) @ slots.k(h).transpose(1, 2) / 4).softmax(1) + 1e-8
            w = a / a.sum(-1, keepdim=True)
            s = slots.gru((w @ slots.v(h)).reshape(6, 16), s.reshape(6, 16)).view(2, 3, 16)
            s = s + slots.mlp(s)
        torch.testing.assert_close(seen["centroid"], w @ xy, atol=1e-5, rtol=0)


def test_grid_objpos_writes_the_objects_centre_into_each_of_its_cells_and_nothing_into_background():
    ideal, plain = _tokens("grid")
    _, tokens = _tokens("grid+objpos")
    circle, square = SCENE.objects

    def centre(o):
        return torch.tensor([o.center[0] / 48 - 0.5, o.center[1] / 48 - 0.5])

    with torch.no_grad():
        for k in range(16):
            cx, cy = (k % 4) * 12 + 6, (k // 4) * 12 + 6
            owner = circle if k == 3 else square if (k == 10 or (20 <= cx < 40 and 20 <= cy < 40)) else None
            want = plain[k] + (ideal.where(centre(owner)) if owner is not None else 0)
            assert torch.allclose(tokens[k], want), k


def test_vit_tokens_are_the_connector_over_the_last_layers_patches_in_raster_order(tmp_path):
    """vit: the frozen ViT's last hidden layer on the rendered scene, CLS dropped, each patch through the MLP."""
    transformers = __import__("pytest").importorskip("transformers")
    cfg = transformers.CLIPVisionConfig(image_size=48, patch_size=12, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    transformers.CLIPVisionModel(cfg).save_pretrained(tmp_path)

    def pixels(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    tokens = probe.VitTokens(ocellus.load(str(tmp_path)), pixels, 16)
    assert not any(p.requires_grad for p in tokens.vit.parameters())
    with torch.no_grad():
        out = tokens(SCENE, np.random.default_rng(0))
        last = tokens.vit(pixels(probe.render(SCENE)), output_hidden_states=True).hidden_states[-1][0]  # [17, 32]
        assert out.shape == (16, 16)
        assert torch.allclose(out, tokens.connector(last[1:]))
        assert not torch.allclose(out, tokens.connector(last[:-1]))


def test_grid_objpos_bg_gives_background_cells_their_own_place():
    ideal, plain = _tokens("grid")
    _, objpos = _tokens("grid+objpos")
    _, tokens = _tokens("grid+objpos+bg")
    with torch.no_grad():
        for k in range(16):
            cx, cy = (k % 4) * 12 + 6, (k // 4) * 12 + 6
            background = not (k in (3, 10) or (20 <= cx < 40 and 20 <= cy < 40))
            cell = torch.tensor([k % 4, k // 4]) / 3 - 0.5
            want = plain[k] + ideal.where(cell) if background else objpos[k]
            assert torch.allclose(tokens[k], want), k
