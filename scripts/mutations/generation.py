"""Generation: VQ-VAE, VQGAN, DDPM / latent diffusion with guidance, MaskGIT, AR image tokens, and the
unified models (Emu3, Janus, Show-o, SEED-LLaMA). Each is a one-line bug a tired engineer could write;
the tests named are default-run tests that recompute one real step from the paper's formula."""
from mutations import Mutation

VQ = "ocellus/models/generative/vq.py"
VQGAN = "ocellus/models/generative/vqgan.py"
GEN = "ocellus/train/generative.py"
STEPS_VQ = "tests/unit/test_vq_vqgan_steps.py"

MUTATIONS = [
    # -- VQ-VAE ------------------------------------------------------------------------------------
    Mutation(name="generation: vq beta on the codebook term (taming legacy)", file=VQ,
             old="codebook + self.beta * commitment, codebook, commitment",
             new="self.beta * codebook + commitment, codebook, commitment",
             tests=[f"{STEPS_VQ}::test_quantizer_step_nearest_code_straight_through_and_beta_on_commitment"]),
    Mutation(name="generation: vq straight-through estimator not detached", file=VQ,
             old="z_q = z + (e - z).detach()", new="z_q = z + (e - z)",
             tests=[f"{STEPS_VQ}::test_quantizer_step_nearest_code_straight_through_and_beta_on_commitment"]),
    Mutation(name="generation: vq commitment stop-gradient on the wrong side", file=VQ,
             old="commitment = F.mse_loss(z, e.detach())", new="commitment = F.mse_loss(z.detach(), e)",
             tests=[f"{STEPS_VQ}::test_quantizer_step_nearest_code_straight_through_and_beta_on_commitment"]),
    Mutation(name="generation: vq lookup picks the farthest code", file=VQ,
             old="- 2 * flat @ e.t() +", new="+ 2 * flat @ e.t() +",
             tests=[f"{STEPS_VQ}::test_quantizer_step_nearest_code_straight_through_and_beta_on_commitment"]),
    Mutation(name="generation: vq EMA sums weighted by decay instead of 1 - decay", file=VQ,
             old="add_(onehot.t() @ flat, alpha=1 - self.decay)", new="add_(onehot.t() @ flat, alpha=self.decay)",
             tests=[f"{STEPS_VQ}::test_ema_codebook_step_decay_and_laplace_smoothing"]),
    Mutation(name="generation: vq Laplace smoothing denominator misses K eps", file=VQ,
             old="(n + self.num_codes * self.eps) * n", new="(n + self.eps) * n",
             tests=[f"{STEPS_VQ}::test_ema_codebook_step_decay_and_laplace_smoothing"]),
    # -- VQGAN -------------------------------------------------------------------------------------
    Mutation(name="generation: vqgan discriminator real and fake sides swapped", file=GEN,
             old="hinge_d_loss(disc(xb), disc(out.recon.detach()))",
             new="hinge_d_loss(disc(out.recon.detach()), disc(xb))",
             tests=[f"{STEPS_VQ}::test_vqgan_one_step_equals_hinge_gan_with_adaptive_weight"]),
    Mutation(name="generation: vqgan adaptive weight at the decoder's first layer", file=GEN,
             old="last = model.decoder[-1].weight", new="last = model.decoder[0].weight",
             tests=[f"{STEPS_VQ}::test_vqgan_one_step_equals_hinge_gan_with_adaptive_weight"]),
    Mutation(name="generation: vqgan generator adversarial term with the wrong sign", file=GEN,
             old="loss = rec + out.quant.loss + weight * g_loss", new="loss = rec + out.quant.loss - weight * g_loss",
             tests=[f"{STEPS_VQ}::test_vqgan_one_step_equals_hinge_gan_with_adaptive_weight"]),
    Mutation(name="generation: vqgan adaptive weight ratio inverted", file=VQGAN,
             old="w = rec_grad.norm() / (g_grad.norm() + 1e-4)", new="w = g_grad.norm() / (rec_grad.norm() + 1e-4)",
             tests=[f"{STEPS_VQ}::test_vqgan_one_step_equals_hinge_gan_with_adaptive_weight"]),
    Mutation(name="generation: vqgan hinge D loss fake margin sign", file=VQGAN,
             old="F.relu(1.0 + logits_fake).mean()", new="F.relu(1.0 - logits_fake).mean()",
             tests=[f"{STEPS_VQ}::test_vqgan_one_step_equals_hinge_gan_with_adaptive_weight"]),
]
