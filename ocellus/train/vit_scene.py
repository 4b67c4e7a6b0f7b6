"""The ViT scene objective (task vit_classify, data.labels: objects): the classifier with a head per question a
VLM's image tokens should answer -- which classes are present (CLS), what covers each patch, and optionally
where its object is (a box per patch) -- and the per-patch targets drawn from a shapes scene. The same objective
for Qwen2-VL's native-resolution tower (SceneQwen2ViTClassifier: patches in merge-group order, mean-pooled)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ocellus.data.image_tiling import qwen2vl_patchify
from ocellus.data.shapes import COLOURS
from ocellus.errors import ConfigError, InputError
from ocellus.models.vision.qwen2_vit import patch_positions, Qwen2VisionTransformer
from ocellus.models.vision.vit import ClassifierOutput, ViTClassifier


class SceneViTClassifier(ViTClassifier):
    """The ViT classification objective for multi-object scenes (data.labels: objects), two heads and an
    optional third:
      - `classifier` on the CLS token: which (shape, colour) classes are present, multi-hot
        labels [N, K], binary cross-entropy per class;
      - `patch_classifier` on every patch token of the last layer: the class of the object covering
        the patch, or K for background, cross-entropy (patch_labels [N, P]);
      - `patch_box` (model.box_loss > 0): every patch token regresses a box in [0, 1] (x0, y0, x1, y1):
        the box of the object covering it, or for background its own cell (model.box_background: cell, the
        default) or the empty box (none) (patch_boxes [N, P, 4]), L1 loss times box_loss.
    The patch head makes every image token say what is at its place, the box head WHERE: without it an
    object's own token carries almost no position (probe R^2 <= 0.04, docs/VLM_COMPARISON.md), so a
    decoder attending to the object reads what it is but not where it is (values carry no RoPE)."""

    def __init__(self, encoder, num_classes: int, box_loss: float = 0.0):
        super().__init__(encoder, num_classes)
        self.patch_classifier = torch.nn.Linear(encoder.config.hidden_size, num_classes + 1)
        self.box_loss = float(box_loss)
        self.patch_box = torch.nn.Linear(encoder.config.hidden_size, 4) if self.box_loss > 0 else None

    def forward(self, pixel_values, labels=None, patch_labels=None, patch_boxes=None,
                interpolate_pos_encoding=False):
        out = self.encoder(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        result = ClassifierOutput(logits=self.classifier(out.pooler_output))     # [N, K]
        losses = []
        if labels is not None:
            losses.append(F.binary_cross_entropy_with_logits(result.logits, labels.float()))
        patches = out.last_hidden_state[:, int(self.encoder.config.use_cls_token):]   # [N, P, D]
        if patch_labels is not None:
            patch_logits = self.patch_classifier(patches)                          # [N, P, K+1]
            losses.append(F.cross_entropy(patch_logits.flatten(0, 1), patch_labels.flatten()))
        if patch_boxes is not None and self.patch_box is not None:
            losses.append(self.box_loss * F.l1_loss(self.patch_box(patches), patch_boxes))   # [N, P, 4]
        result.loss = sum(losses) if losses else None
        return result


class SceneQwen2ViTClassifier(torch.nn.Module):
    """SceneViTClassifier's objective on a Qwen2-VL / Qwen2.5-VL tower (models/vision/qwen2_vit.py), before its
    2x2 merger: the merger is the VLM's connector and trains there, so every ViT patch keeps its own label
    (the labels of a merged token's 2x2 patches all reach the merger). Images [N, C, H, W] are patchified as
    the VLM's processor does (data/image_tiling.qwen2vl_patchify: the image repeated over the temporal patch,
    each merge group contiguous) and run as one packed sequence, every image its own attention segment.
    The tower has no CLS token: the classes present are read from the mean of an image's patch states.
    The targets come row-major over the patch grid (patch_classes, patch_boxes); the tower's patch order is
    merge-group order, so they are taken in that order (patch_order) before the losses."""

    def __init__(self, encoder: Qwen2VisionTransformer, num_classes: int, box_loss: float = 0.0):
        super().__init__()
        self.encoder = encoder
        width = encoder.config.hidden_size
        self.classifier = torch.nn.Linear(width, num_classes)
        self.patch_classifier = torch.nn.Linear(width, num_classes + 1)
        self.box_loss = float(box_loss)
        self.patch_box = torch.nn.Linear(width, 4) if self.box_loss > 0 else None

    def patches(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[N, C, H, W] -> (the tower's last hidden states [N, P, D] in its own patch order, grid (h, w))."""
        cfg = self.encoder.config
        if pixel_values.dim() != 4:
            raise InputError(f"pixel_values must be [N, C, H, W], got {tuple(pixel_values.shape)}")
        flat, grids = zip(*(qwen2vl_patchify(image, cfg.patch_size, cfg.temporal_patch_size, cfg.spatial_merge_size)
                            for image in pixel_values))
        grid_thw = torch.tensor(grids, dtype=torch.long)                                 # [N, 3]
        hidden = self.encoder(torch.cat(flat), grid_thw)                                  # [N*P, D]
        _, h, w = grids[0]
        return hidden.view(len(flat), h * w, -1), (h, w)

    def forward(self, pixel_values, labels=None, patch_labels=None, patch_boxes=None):
        patches, (h, w) = self.patches(pixel_values)                                     # [N, P, D]
        result = ClassifierOutput(logits=self.classifier(patches.mean(1)))                # [N, K]
        order = patch_order(h, w, self.encoder.config.spatial_merge_size).to(patches.device)   # [P]
        losses = []
        if labels is not None:
            losses.append(F.binary_cross_entropy_with_logits(result.logits, labels.float()))
        if patch_labels is not None:
            patch_logits = self.patch_classifier(patches)                                  # [N, P, K+1]
            losses.append(F.cross_entropy(patch_logits.flatten(0, 1), patch_labels[:, order].flatten()))
        if patch_boxes is not None and self.patch_box is not None:
            losses.append(self.box_loss * F.l1_loss(self.patch_box(patches), patch_boxes[:, order]))
        result.loss = sum(losses) if losses else None
        return result


def patch_order(h: int, w: int, merge_size: int) -> torch.Tensor:
    """[h*w]: the row-major index (r * w + c) of each patch of a Qwen2-VL tower, in the tower's order (merge
    groups row-major, then the patches of a group); row-major targets indexed by it are in the tower's order."""
    rc = patch_positions([(1, h, w)], merge_size)                                       # [h*w, 2]
    return rc[:, 0] * w + rc[:, 1]


def patch_owners(scene, image, patch: int, size: int, min_fraction: float = 0.1) -> np.ndarray:
    """The index of the object covering most of each patch (row-major) in scene.objects, -1 for
    background (objects covering less than min_fraction of the patch). Pixels are exact palette colours
    and boxes do not overlap, so an object's pixels are its colour inside its box."""
    if image.size != (size, size):
        image = image.resize((size, size), 0)  # nearest: keep palette colours exact
        scale = size / scene.image_size
    else:
        scale = 1.0
    rgb = np.asarray(image)
    owner = np.full((size, size), -1, dtype=np.int64)                        # [H, W] object index per pixel
    for k, obj in enumerate(scene.objects):
        x0, y0, x1, y1 = (int(round(v * scale)) for v in obj.bbox)
        inside = (rgb[y0:y1, x0:x1] == COLOURS[obj.colour]).all(-1)
        owner[y0:y1, x0:x1][inside] = k
    g = size // patch
    if not scene.objects:
        return np.full(g * g, -1, dtype=np.int64)
    blocks = owner[:g * patch, :g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
    counts = np.stack([(blocks == k).sum(1) for k in range(len(scene.objects))], 1)   # [P, objects]
    best = counts.argmax(1)
    best[counts.max(1) < min_fraction * patch * patch] = -1
    return best


def patch_classes(scene, image, classes, patch: int, size: int) -> torch.Tensor:
    """[P] the (shape, colour) class of each patch's owner (patch_owners), len(classes) for background."""
    ids = [classes.index((o.shape, o.colour)) for o in scene.objects] + [len(classes)]
    return torch.tensor([ids[k] for k in patch_owners(scene, image, patch, size)], dtype=torch.long)


BOX_BACKGROUNDS = ("cell", "none")


def check_box_background(background: str) -> str:
    """model.box_background -> itself, or a ConfigError naming the choices."""
    if background not in BOX_BACKGROUNDS:
        raise ConfigError(f"model.box_background must be one of {BOX_BACKGROUNDS}, got {background!r}")
    return background


def patch_boxes(scene, image, patch: int, size: int, background: str = "cell") -> torch.Tensor:
    """[P, 4] each patch's box target in [0, 1] (x0, y0, x1, y1): its owner's box (scene pixels over the
    scene size); for background, background="cell": the patch's own cell, "none": the empty box (0, 0, 0, 0),
    so that only object patches carry a place (docs/VLM_COMPARISON.md, session 22: a decoder learned relations
    from ideal tokens with the objects' places alone, not with the background's cells added)."""
    check_box_background(background)
    g = size // patch
    owners = patch_owners(scene, image, patch, size)
    out = torch.zeros(len(owners), 4)
    for p, k in enumerate(owners):
        if k >= 0:
            out[p] = torch.tensor(scene.objects[k].bbox, dtype=torch.float32) / scene.image_size
        elif background == "cell":
            r, c = divmod(p, g)
            out[p] = torch.tensor([c, r, c + 1, r + 1], dtype=torch.float32) / g
    return out


def stack_labels(rows):
    labels = [r[1] for r in rows]
    labels = torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels)
    batch = {"pixel_values": torch.stack([r[0] for r in rows]), "labels": labels}
    if len(rows[0]) > 2:
        batch["patch_labels"] = torch.stack([r[2] for r in rows])
    if len(rows[0]) > 3:
        batch["patch_boxes"] = torch.stack([r[3] for r in rows])
    return batch
