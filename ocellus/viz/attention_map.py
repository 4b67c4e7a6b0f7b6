"""Which image patches did the answer look at? Attention heat maps over the patch grid.

    result = explain(model, processor, "cat.jpg", "What animal is this?", out="heat.png")
    result.answer, result.grid ([rows, cols] attention per patch), result.peak ((row, col))

The recipe (the raw-attention maps of e.g. LLaVA interpretability write-ups; no gradients):
1. generate the answer greedily, as `ocellus generate` would: it ends at eos or at the processor's stop strings
   (MiniGPT-4's "###", infer/stop_text.py), and neither the eos nor the stop string is part of the answer;
2. run ONE more forward pass over prompt + answer with a forward pre-hook on every decoder
   `self_attn` (ocellus/nn/attention.py::Attention). The hook sees the module's input (the normed
   hidden states, the RoPE cos/sin and the mask) and recomputes q and k from it, with RoPE, to get
   softmax(q k^T / sqrt(d) + mask) -- the probabilities SDPA computes internally but never returns;
3. keep the rows of the positions that CHOSE each answer token (position t's output predicts token
   t+1: for the first answer token that is the last prompt position) and the columns of the image
   tokens, average over layers, heads and answer tokens, and fold the image columns into the
   (H/patch) x (W/patch) grid (a CLS column, kept by the "full" strategy, is dropped);
4. upsample the grid over the part of the original image the model saw (the resize / center-crop /
   pad-to-square view is mapped back to original pixels) and blend a colour map onto the image.

This analysis pass is separate from generation and slower than it: no KV cache, the q/k projections
are computed twice per layer, and the probabilities are materialised ([heads, answer tokens, T] per
layer, never the full T x T). The attention module itself is untouched; the hooks are removed when
the pass ends. Pillow + numpy only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ocellus.data.image import load_image, resize_target
from ocellus.errors import ConfigError, InputError
from ocellus.infer.stop_text import reply_stops, tokens_before_stop
from ocellus.models.connectors.perceiver import PerceiverResampler
from ocellus.models.connectors.qformer import QFormer
from ocellus.models.connectors.resampler import Resampler
from ocellus.nn.attention import Attention
from ocellus.nn.rope import apply_rotary
from ocellus.data.processor import Processor


# ----------------------------------------------------------------------------------------------
# Attention probabilities, recomputed from each attention module's input
# ----------------------------------------------------------------------------------------------

def attention_probabilities(attn: Attention, x: torch.Tensor, rope, mask: torch.Tensor | None,
                            rows: torch.Tensor) -> torch.Tensor:
    """The softmax `attn` applies, for the query positions `rows` only.

    x: the module's input [B, T, D] (already normed by the layer); rope: (cos, sin) or None;
    mask: boolean [B|1, 1, T, T] (True = may attend) or None for plain causal, as the decoder passes
    it without a cache. -> probabilities [B, H, len(rows), T] in float32."""
    B, T, _ = x.shape
    H, Hkv, Dh = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = attn.normed_q(attn.q_proj(x).view(B, T, H, Dh).transpose(1, 2))      # [B, H, T, Dh]
    k = attn.normed_k(attn.k_proj(x).view(B, T, Hkv, Dh).transpose(1, 2))    # [B, Hkv, T, Dh]
    if rope is not None:
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    q = q[:, :, rows].float()                                                 # [B, H, Q, Dh]
    k = k.float().repeat_interleave(H // Hkv, dim=1)                          # [B, H, T, Dh] (GQA groups)
    scores = q @ k.transpose(-1, -2) / math.sqrt(Dh)                          # [B, H, Q, T]
    if mask is None:  # plain causal: query i sees keys 0..i
        allowed = torch.arange(T, device=x.device)[None, :] <= rows[:, None]  # [Q, T]
    else:
        allowed = mask[:, :, rows, :]                                         # [B|1, 1, Q, T]
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)


class AttentionRecorder:
    """Context manager: while active, every decoder layer's self-attention records its attention
    probabilities for the query positions `rows` (a list of ints, positions in the forward's input).

        with AttentionRecorder(model.language_model, rows) as rec:
            model(input_ids=..., pixel_values=...)
        rec.probabilities  # [layers, B, heads, len(rows), T]

    Only for a forward without a KV cache (the analysis pass): with a cache the module's input would be
    only the new tokens."""

    def __init__(self, decoder, rows):
        layers = getattr(decoder, "layers", None)
        if layers is None or not all(isinstance(getattr(layer, "self_attn", None), Attention) for layer in layers):
            raise ConfigError("attention maps need a decoder whose layers have an Attention `self_attn` "
                              "(ocellus/nn/attention.py); this model's attention is of another kind")
        self.modules = [layer.self_attn for layer in layers]
        self.rows = torch.as_tensor(list(rows), dtype=torch.long)
        self._probs: list[torch.Tensor] = []
        self._handles = []

    def _hook(self, module, args, kwargs):
        names = ("x", "rope", "mask", "cache")  # Attention.forward's parameters, passed positionally or by name
        bound = {**dict(zip(names, args)), **kwargs}
        if bound.get("cache") is not None:
            raise InputError("AttentionRecorder records a forward without a KV cache (the analysis pass)")
        x = bound["x"]
        rows = self.rows.to(x.device)
        if int(rows.max()) >= x.shape[1]:
            raise InputError(f"query rows up to {int(rows.max())} but the forward has {x.shape[1]} positions")
        with torch.no_grad():
            self._probs.append(attention_probabilities(module, x, bound.get("rope"), bound.get("mask"), rows).cpu())

    def __enter__(self) -> "AttentionRecorder":
        self._probs.clear()
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def probabilities(self) -> torch.Tensor:
        if not self._probs:
            raise InputError("no attention was recorded: run the model's forward inside the `with` block")
        return torch.stack(self._probs)                                       # [L, B, H, Q, T]


# ----------------------------------------------------------------------------------------------
# Answer -> patch grid
# ----------------------------------------------------------------------------------------------

@dataclass
class AttentionMap:
    answer: str
    answer_ids: list[int]
    grid: np.ndarray                   # [rows, cols]: mean attention probability on each patch
    layer_head: np.ndarray             # [layers, heads, rows, cols]: the same, before the layer/head average
    view_box: tuple[float, float, float, float]  # (left, top, right, bottom) of what the model saw, original pixels
    image: Image.Image = field(repr=False)        # the RGB image the question was about

    @property
    def peak(self) -> tuple[int, int]:
        """(row, col) of the patch with the most attention."""
        r, c = np.unravel_index(int(np.argmax(self.grid)), self.grid.shape)
        return int(r), int(c)


def view_box(image_size: tuple[int, int], cfg, pad_to_square: bool = False) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom), in the ORIGINAL image's pixels, that the model's input shows
    after pad-to-square, resize and center crop (it can reach outside the image: padding)."""
    w, h = image_size
    off_x = off_y = 0.0
    if pad_to_square:  # expand2square: the image is pasted at ((s - w) // 2, (s - h) // 2) on an s x s canvas
        s = max(w, h)
        off_x, off_y, w, h = (s - w) // 2, (s - h) // 2, s, s
    rh, rw = resize_target(h, w, cfg) if cfg.do_resize else (h, w)
    sx, sy = w / rw, h / rh                                                   # canvas pixels per resized pixel
    left, top, right, bottom = 0, 0, rw, rh
    if cfg.do_center_crop:  # same window as image.center_crop (floor division, also when the crop is larger)
        ch, cw = cfg.crop_size
        top, left = (rh - ch) // 2, (rw - cw) // 2
        right, bottom = left + cw, top + ch
    return (left * sx - off_x, top * sy - off_y, right * sx - off_x, bottom * sy - off_y)


# connectors whose image tokens are learned queries / latents that cross-attend to the patches: a token is a
# mix of the whole image, not a patch, and the tokens have no spatial layout
QUERY_CONNECTORS = (QFormer, Resampler, PerceiverResampler)


@torch.no_grad()
def answer_attention(model, processor, image, question: str, *, max_new_tokens: int = 32) -> AttentionMap:
    """Generate an answer about one image, then measure how much each image patch was attended to
    while the answer tokens were chosen (see the module docstring)."""
    if not isinstance(processor, Processor):
        raise ConfigError("attention maps need the checkpoint's image processor (ocellus.load_processor "
                          "returned a text-only tokenizer)")
    if processor.grid_pinpoints is not None:
        raise ConfigError("attention maps cover single-view models (LLaVA, LLaVA-1.5); an anyres (LLaVA-NeXT) image "
                          "is several views packed with newline tokens, which this map does not unfold yet")
    queries = next((m for m in model.modules() if isinstance(m, QUERY_CONNECTORS)), None)
    if queries is not None:
        raise ConfigError(f"attention maps are drawn over the patch grid, and this model's image tokens are not "
                          f"patches: its {type(queries).__name__} turns the patches into learned queries (resampled "
                          f"latents), each a mix of the whole image, so there is no grid to map the attention onto")
    if max_new_tokens < 1:
        raise InputError("max_new_tokens must be >= 1: the map is over the answer's tokens")
    img = load_image(image, name="image", max_pixels=processor.max_pixels)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    device = next(model.parameters()).device
    batch = processor(messages=messages, images=[img], add_generation_prompt=True).to(device)
    prompt, pixels = batch["input_ids"], batch["pixel_values"]              # [1, T0], [1, 3, H, W]
    stops = reply_stops(processor)
    out = model.generate(prompt, pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False,
                         stop_strings=stops, tokenizer=processor.tokenizer)
    answer = out[0, prompt.shape[1]:].tolist()
    eos = set(getattr(model.config, "eos_token_id", ()) or ())
    kept = tokens_before_stop(lambda ids: processor.decode(ids, skip_special_tokens=True), answer, stops)
    # neither the stop string nor the eos is part of the answer (unless it is all of it: the map is over the
    # positions that chose the ending)
    if kept:
        answer = answer[:kept]
    elif kept is None and len(answer) > 1 and answer[-1] in eos:
        answer = answer[:-1]

    # Analysis pass over prompt + answer minus its last token: that token's own row predicts nothing we keep.
    T0 = prompt.shape[1]
    seq = torch.tensor([prompt[0].tolist() + answer[:-1]], device=device)    # [1, T0 + n - 1]
    rows = list(range(T0 - 1, T0 - 1 + len(answer)))                         # the positions that chose the answer
    with AttentionRecorder(model.language_model, rows) as rec:
        model(input_ids=seq, pixel_values=pixels)
    probs = rec.probabilities[:, 0]                                          # [L, H, Q, T]

    image_pos = (prompt[0] == model.image_token_id).nonzero().flatten().cpu()  # [P']
    on_image = probs[..., image_pos].mean(dim=2)                             # [L, H, P'] averaged over answer tokens
    p = model.vision_tower.config.patch_size
    gh, gw = pixels.shape[-2] // p, pixels.shape[-1] // p
    if on_image.shape[-1] == gh * gw + 1:  # the "full" strategy keeps CLS in front of the patches
        on_image = on_image[..., 1:]
    if on_image.shape[-1] != gh * gw:
        raise ConfigError(f"{on_image.shape[-1]} image tokens do not form the {gh}x{gw} patch grid of a "
                          f"{pixels.shape[-2]}x{pixels.shape[-1]} image (a CLS-less tower with the 'default' strategy "
                          f"drops a patch, so its tokens are not a grid)")
    layer_head = on_image.reshape(*on_image.shape[:2], gh, gw).numpy()      # [L, H, gh, gw]
    text = "" if kept == 0 else processor.decode(answer, skip_special_tokens=True)
    return AttentionMap(answer=text, answer_ids=answer,
                        grid=layer_head.mean(axis=(0, 1)), layer_head=layer_head,
                        view_box=view_box(img.size, processor.image_config, processor.pad_to_square), image=img)


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------

# blue -> cyan -> green -> yellow -> red ("jet"-like), at heat 0, .25, .5, .75, 1
_COLORMAP = np.array([[0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], dtype=np.float32)


def colormap(heat: np.ndarray) -> np.ndarray:
    """Heat in [0, 1], any shape -> RGB float colours in 0..255, shape [..., 3]."""
    stops = np.linspace(0.0, 1.0, len(_COLORMAP))
    return np.stack([np.interp(heat, stops, _COLORMAP[:, c]) for c in range(3)], axis=-1)


def heat_image(grid: np.ndarray, image_size: tuple[int, int], box=None) -> tuple[np.ndarray, np.ndarray]:
    """The grid, scaled to [0, 1] (min to max), upsampled bilinearly over `box` (default: the whole image)
    on an image of image_size (W, H). -> (heat [H, W] float32, seen [H, W] bool: pixels inside the box)."""
    W, H = image_size
    g = np.asarray(grid, dtype=np.float32)
    span = float(g.max() - g.min())
    g = (g - g.min()) / span if span > 0 else np.zeros_like(g)
    left, top, right, bottom = box if box is not None else (0, 0, W, H)
    x0, y0 = int(round(left)), int(round(top))
    bw, bh = max(1, int(round(right)) - x0), max(1, int(round(bottom)) - y0)
    up = np.asarray(Image.fromarray(g).resize((bw, bh), Image.Resampling.BILINEAR), dtype=np.float32)  # mode F
    heat, seen = np.zeros((H, W), np.float32), np.zeros((H, W), bool)
    xa, xb, ya, yb = max(0, x0), min(W, x0 + bw), max(0, y0), min(H, y0 + bh)  # the box clipped to the image
    if xa < xb and ya < yb:
        heat[ya:yb, xa:xb] = up[ya - y0:yb - y0, xa - x0:xb - x0]
        seen[ya:yb, xa:xb] = True
    return heat.clip(0, 1), seen


def overlay(image, grid: np.ndarray, box=None, alpha: float = 0.5) -> Image.Image:
    """Blend the heat map onto the image (same size as the image). Pixels the model did not see
    (cropped away by the processor) are dimmed instead of coloured."""
    img = load_image(image, name="image", max_pixels=None)
    heat, seen = heat_image(grid, img.size, box)
    base = np.asarray(img, dtype=np.float32)                                  # [H, W, 3]
    blended = base * (1 - alpha) + colormap(heat) * alpha
    out = np.where(seen[..., None], blended, base * 0.4)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def explain(model, processor, image, question: str, out=None, *, max_new_tokens: int = 32,
            alpha: float = 0.5) -> AttentionMap:
    """answer_attention + overlay; writes the PNG to `out` when given. Returns the AttentionMap."""
    result = answer_attention(model, processor, image, question, max_new_tokens=max_new_tokens)
    if out is not None:
        overlay(result.image, result.grid, result.view_box, alpha=alpha).save(out, format="PNG")
    return result
