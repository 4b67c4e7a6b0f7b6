"""Small wiring checks for unified models, InternViT, VQGAN's feature loss and the shapes data: each pins one
line the larger tests left free (scripts/mutations/unified_data.toml names them)."""
import torch
from torch import nn

from ocellus.data.shapes import to_qwen_box
from ocellus.data.shapes_video import VideoShapesConfig, make_track
from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.generative.vqgan import FeatureLoss
from ocellus.models.unified import WordVocab
from ocellus.models.unified.janus import build_janus
from ocellus.models.unified.seed import SeedTokenizer
from ocellus.models.unified.seed_detokenizer import EmbeddingConditioner
from ocellus.models.vision.intern_vit import InternViT, InternViTConfig
from ocellus.models.vision.vit import ViTConfig, VisionTransformer

WORDS = ["red", "blue", "circle", "square"]


def _janus():
    torch.manual_seed(0)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    return build_janus({"dim": 32, "num_layers": 2, "num_heads": 2, "vit_dim": 32, "vit_layers": 2,
                        "vit_patch": 8, "gen_embed_dim": 8}, tok, WordVocab(WORDS), 16)


def test_janus_image_slots_hold_the_last_vit_layer_through_the_aligner():
    m = _janus().eval()
    ids = torch.tensor([m.sequence("red circle", torch.zeros(2, 2, dtype=torch.long), "i2t")[0]])
    px = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        x = m.embed(ids, px)
        want = m.und_aligner(m.vision.features(px, layer=-1))[0]                   # [P, D]
    torch.testing.assert_close(x[0, ids[0] == m.image_token], want)


def test_janus_describe_writes_words_only_even_when_markers_score_highest():
    m = _janus().eval()
    with torch.no_grad():
        m.decoder.lm_head.weight.zero_()
        if m.decoder.lm_head.bias is None:
            m.decoder.lm_head.bias = nn.Parameter(torch.zeros(m.gen_base))
        m.decoder.lm_head.bias.zero_()
        m.decoder.lm_head.bias[[m.boi, m.eoi, m.image_token]] = 100.0
        m.decoder.lm_head.bias[len(WORDS) - 1] = 1.0
    out = m.describe(torch.zeros(1, 3, 16, 16), max_new_tokens=3)
    assert all(w in WORDS for w in out[0].split()) and out[0].strip()


def _seed():
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=1,
                                      num_heads=2))
    qf = QFormer(QFormerConfig(num_query_tokens=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1))
    return SeedTokenizer(vit, qf, num_codes=16, code_dim=8, embed_dim=12).eval()


def test_seed_reconstruction_pools_the_mean_over_all_codes():
    tok = _seed()
    z_q = torch.randn(2, 8, 4, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = tok.up(z_q[..., 0].transpose(1, 2))
        for block in tok.reverse:
            x = block(x)
        want = tok.recon_head(x.mean(1))
        torch.testing.assert_close(tok.embedding_from(z_q), want)


def test_seed_conditioner_ignores_the_embedding_scale_and_offset():
    torch.manual_seed(0)
    c = EmbeddingConditioner(12, 16, num_tokens=2).eval()
    e = torch.randn(3, 12)
    with torch.no_grad():
        torch.testing.assert_close(c(5 * e + 2), c(e), atol=1e-4, rtol=1e-4)


def test_internvit_default_strategy_drops_only_cls():
    torch.manual_seed(0)
    vit = InternViT(InternViTConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=1,
                                    num_heads=2)).eval()
    px = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit.features(px, layer=-1), vit.features(px, layer=-1, strategy="full")[:, 1:])


class _Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())


def test_feature_loss_is_the_distance_of_unit_norm_activations():
    torch.manual_seed(0)
    judge = _Judge()
    x, y = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    want, a, b = 0.0, x, y
    with torch.no_grad():
        for layer in judge.convs:
            a, b = layer(a), layer(b)
            if isinstance(layer, nn.ReLU):
                ua = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ub = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                want = want + (ua - ub).pow(2).sum(1).mean()
        torch.testing.assert_close(FeatureLoss(judge)(x, y), want)


def test_qwen_box_scales_x_by_the_width_and_y_by_the_height():
    assert to_qwen_box((10, 20, 50, 100), 100, 200) == (100, 100, 500, 500)


def test_video_sweep_is_the_travel_fraction_of_the_side():
    cfg = VideoShapesConfig(image_size=48, frames=4, travel=0.5, side=(6, 8))
    assert cfg.sweep == 24
    import numpy as np
    track = make_track(np.random.default_rng(0), cfg)
    first, last = track["boxes"][0], track["boxes"][-1]
    assert abs(last[0] - first[0]) + abs(last[1] - first[1]) == 24


def test_center_crop_of_a_small_image_pads_with_the_ceil_offset():
    from ocellus.data.image import center_crop
    out = center_crop(torch.ones(1, 3, 3), (6, 6))
    rows, cols = out[0].nonzero()[:, 0], out[0].nonzero()[:, 1]
    assert (rows.min().item(), cols.min().item()) == (2, 2) and out.shape[-2:] == (6, 6)
