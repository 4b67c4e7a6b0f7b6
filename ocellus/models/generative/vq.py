"""VQ-VAE: a conv encoder, a codebook looked up by nearest neighbour, a conv decoder.

van den Oord et al. 2017, "Neural Discrete Representation Learning" (eq. 3):

    L = ||x - D(z_q)||^2 + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2,   beta = 0.25

The second term (codebook loss) moves the codes towards the encoder outputs; the third
(commitment loss) keeps the encoder near its codes, and **beta multiplies the commitment term**.
(taming-transformers' VectorQuantizer with legacy=True, which many repositories copied, puts beta
on the codebook term instead; here it is the paper's.) Gradients pass the non-differentiable
lookup straight through: z_q = z_e + sg[e - z_e].

Options from the follow-ups: EMA codebook updates instead of the codebook loss (the paper's
appendix A.1; Razavi et al. 2019, VQ-VAE-2): N_k <- decay N_k + (1-decay) n_k, m_k <- decay m_k +
(1-decay) sum z_e, e_k = m_k / N_k (Laplace-smoothed N); and dead-code restarts (Dhariwal et al.
2020, Jukebox, sec. 3.3): a code whose EMA usage falls below `restart_threshold` is moved onto a
random encoder output of the current batch. Each forward reports codebook usage (fraction of codes
hit in the batch) and perplexity exp(H(code frequencies)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.models.generative.unet import ResBlock, check_image_batch


@dataclass(frozen=True)
class VQConfig:
    in_channels: int = 1
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)   # one halving per entry: 16px -> 4x4 tokens for (1, 2)
    num_res_blocks: int = 1
    embed_dim: int = 16                       # code width
    num_codes: int = 64
    beta: float = 0.25                        # weight of the commitment term
    ema: bool = False
    decay: float = 0.99
    restart_threshold: float = 0.0            # EMA usage count under which a code restarts; 0 = never
    groups: int = 8

    def __post_init__(self):
        if self.num_codes < 2 or self.embed_dim < 1:
            raise ConfigError(f"need num_codes >= 2 and embed_dim >= 1, got {self.num_codes}, {self.embed_dim}")
        if not 0 < self.decay < 1:
            raise ConfigError(f"EMA decay must be in (0, 1), got {self.decay}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.channel_mults)


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor              # [B, D, h, w] straight-through quantized latents
    indices: torch.Tensor          # [B, h, w]
    loss: torch.Tensor             # codebook + beta * commitment (commitment only under EMA)
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor            # fraction of codes used in this batch


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, ema: bool = False, decay: float = 0.99,
                 restart_threshold: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.num_codes, self.dim, self.beta = num_codes, dim, beta
        self.ema, self.decay, self.restart_threshold, self.eps = ema, decay, restart_threshold, eps
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1 / num_codes, 1 / num_codes)
        self.embedding.weight.requires_grad_(not ema)
        self.register_buffer("cluster_size", torch.ones(num_codes))           # EMA usage counts N_k
        self.register_buffer("embed_sum", self.embedding.weight.detach().clone())  # EMA sums m_k

    def lookup(self, flat: torch.Tensor) -> torch.Tensor:
        """Nearest code of each row of flat [N, D] -> [N] (||z||^2 - 2 z.e + ||e||^2)."""
        e = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]   # [N, K]
        return d.argmin(1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        B, D, H, W = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)                                   # [BHW, D]
        idx = self.lookup(flat)                                                        # [BHW]
        onehot = F.one_hot(idx, self.num_codes).type(flat.dtype)                       # [BHW, K]
        if self.training and self.ema:
            self._ema_update(flat.detach(), onehot)
        elif self.training:
            self._count(onehot)
        if self.training and self.restart_threshold > 0:
            self._restart(flat.detach())
        e = self.embedding(idx).view(B, H, W, D).permute(0, 3, 1, 2)                   # [B, D, H, W]
        codebook = F.mse_loss(e, z.detach()) if not self.ema else z.new_zeros(())
        commitment = F.mse_loss(z, e.detach())
        z_q = z + (e - z).detach()                                                     # straight-through
        probs = onehot.mean(0)
        return QuantizerOutput(z_q, idx.view(B, H, W), codebook + self.beta * commitment, codebook, commitment,
                               torch.exp(-(probs * torch.log(probs + 1e-10)).sum()),
                               (probs > 0).float().mean())

    @torch.no_grad()
    def _count(self, onehot):
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)

    @torch.no_grad()
    def _ema_update(self, flat, onehot):
        self._count(onehot)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n   # Laplace smoothing
        self.embedding.weight.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart(self, flat):
        dead = self.cluster_size < self.restart_threshold
        n = int(dead.sum())
        if n == 0:
            return
        pick = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        self.embedding.weight[dead] = flat[pick]
        self.embed_sum[dead] = flat[pick]
        self.cluster_size[dead] = 1.0   # a fresh code gets one step's worth of usage before it can die again

    def decode_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """[B, h, w] code ids -> [B, D, h, w] latents."""
        if idx.min() < 0 or idx.max() >= self.num_codes:
            raise InputError(f"code ids must be in [0, {self.num_codes}), got range "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return self.embedding(idx).permute(0, 3, 1, 2)


def _tower(cfg: VQConfig, down: bool) -> nn.Sequential:
    ch, g, layers = cfg.channels, cfg.groups, []
    widths = [ch * m for m in cfg.channel_mults]
    if down:
        layers.append(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))
        cin = ch
        for w in widths:
            layers += [ResBlock(cin, w, g) for _ in range(cfg.num_res_blocks)] if cfg.num_res_blocks else []
            cin = w if cfg.num_res_blocks else cin
            layers.append(nn.Conv2d(cin, cin, 4, stride=2, padding=1))               # halve
        layers += [nn.GroupNorm(g, cin), nn.SiLU(), nn.Conv2d(cin, cfg.embed_dim, 1)]
        return nn.Sequential(*layers)
    cin = widths[-1]
    layers.append(nn.Conv2d(cfg.embed_dim, cin, 3, padding=1))
    for w in reversed(widths):
        layers.append(nn.ConvTranspose2d(cin, cin, 4, stride=2, padding=1))          # double
        layers += [ResBlock(cin, w, g) for _ in range(cfg.num_res_blocks)] if cfg.num_res_blocks else []
        cin = w if cfg.num_res_blocks else cin
    layers += [nn.GroupNorm(g, cin), nn.SiLU(), nn.Conv2d(cin, cfg.in_channels, 3, padding=1)]
    return nn.Sequential(*layers)


@dataclass
class VQOutput:
    loss: torch.Tensor
    recon: torch.Tensor
    recon_loss: torch.Tensor
    quant: QuantizerOutput


class VQVAE(nn.Module):
    """encode (x [B, C, H, W] -> z_e [B, D, H/f, W/f]) -> quantize -> decode; images in [-1, 1]."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = _tower(cfg, down=True), _tower(cfg, down=False)
        self.quantizer = VectorQuantizer(cfg.num_codes, cfg.embed_dim, cfg.beta, cfg.ema, cfg.decay,
                                         cfg.restart_threshold)

    def check_images(self, x: torch.Tensor) -> torch.Tensor:
        return check_image_batch(x, self.cfg.in_channels, self.cfg.downsample_factor, "VQ tokenizer")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.check_images(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Quantize continuous latents [B, D, h, w], then decode (the latent-diffusion decoder)."""
        return self.decoder(self.quantizer(z).z_q)

    def encode_to_ids(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.encode(x)).indices                                 # [B, h, w]

    def decode_ids(self, idx: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.decode_indices(idx))

    def forward(self, pixel_values: torch.Tensor, labels=None) -> VQOutput:
        q = self.quantizer(self.encode(pixel_values))
        recon = self.decoder(q.z_q)
        rec = F.mse_loss(recon, pixel_values)
        return VQOutput(rec + q.loss, recon, rec, q)
