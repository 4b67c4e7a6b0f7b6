"""Generation: VQ-VAE, VQGAN, DDPM / latent diffusion with guidance, MaskGIT, AR image tokens, and the
unified models (Emu3, Janus, Show-o, SEED-LLaMA). Each is a one-line bug a tired engineer could write;
the tests named are default-run tests that recompute one real step from the paper's formula."""
from mutations import Mutation

VQ = "ocellus/models/generative/vq.py"
VQGAN = "ocellus/models/generative/vqgan.py"
GEN = "ocellus/train/generative.py"
STEPS_VQ = "tests/unit/test_vq_vqgan_steps.py"
DDPM = "ocellus/models/generative/ddpm.py"
LDM = "ocellus/models/generative/latent_diffusion.py"
GUIDE = "ocellus/models/generative/guidance.py"
STEPS_DIFF = "tests/unit/test_diffusion_steps.py"
MASKGIT = "ocellus/models/generative/maskgit.py"
AR = "ocellus/models/generative/ar_image.py"
STEPS_MG = "tests/unit/test_maskgit_ar_steps.py"
MG_TRAIN = f"{STEPS_MG}::test_maskgit_training_step_masks_by_cosine_and_scores_masked_tokens_only"
MG_DECODE = f"{STEPS_MG}::test_maskgit_decoding_remasks_the_least_confident_and_keeps_fixed_tokens"
AR_LOSS = f"{STEPS_MG}::test_ar_image_loss_is_next_token_with_the_class_token_predicting_the_first_code"
EMU3 = "ocellus/models/unified/emu3.py"
JANUS = "ocellus/models/unified/janus.py"
SHOWO = "ocellus/models/unified/showo.py"
UNI = "ocellus/models/unified/__init__.py"
UNI_TRAIN = "ocellus/train/unified.py"
STEPS_UNI = "tests/unit/test_unified_steps.py"
EMU3_STEP = f"{STEPS_UNI}::test_emu3_step_is_vision_weighted_next_token_loss_over_the_layout"
JANUS_STEP = f"{STEPS_UNI}::test_janus_step_reads_codes_with_gen_head_and_words_with_lm_head"
SHOWO_STEP = f"{STEPS_UNI}::test_showo_step_is_masked_token_loss_on_codes_plus_next_token_loss_on_text"
SEED = "ocellus/models/unified/seed.py"
SHOWO_DECODE = f"{STEPS_UNI}::test_showo_decoding_guides_cond_against_caption_free_rows_and_remasks_the_least_confident"
SEED_STEP = f"{STEPS_UNI}::test_seed_tokenizer_step_reconstructs_from_the_quantized_codes"
LDM_TRAIN = f"{STEPS_DIFF}::test_latent_diffusion_training_step_scales_latents_and_drops_the_condition"
LDM_SAMPLE = f"{STEPS_DIFF}::test_latent_diffusion_sampling_guides_in_latent_space_and_decodes_z_over_scale"

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
    # -- DDPM --------------------------------------------------------------------------------------
    Mutation(name="generation: ddpm q_sample noise scaled by 1 - abar, not its root", file=DDPM,
             old="return ab.sqrt() * x0 + (1 - ab).sqrt() * noise", new="return ab.sqrt() * x0 + (1 - ab) * noise",
             tests=[f"{STEPS_DIFF}::test_training_step_is_eps_mse_at_the_closed_form_x_t"]),
    Mutation(name="generation: ddpm training regresses x0 instead of eps", file=DDPM,
             old="eps_fn(self.q_sample(x0, t, noise), t), noise)", new="eps_fn(self.q_sample(x0, t, noise), t), x0)",
             tests=[f"{STEPS_DIFF}::test_training_step_is_eps_mse_at_the_closed_form_x_t"]),
    Mutation(name="generation: ddpm training never samples t = 0", file=DDPM,
             old="t = torch.randint(0, self.T, (x0.shape[0],)", new="t = torch.randint(1, self.T, (x0.shape[0],)",
             tests=[f"{STEPS_DIFF}::test_training_step_is_eps_mse_at_the_closed_form_x_t"]),
    Mutation(name="generation: ddpm posterior mean uses alpha for sqrt(alpha)", file=DDPM,
             old="(alpha.sqrt() * (1 - ab_prev) / (1 - ab_t)) * x_t", new="(alpha * (1 - ab_prev) / (1 - ab_t)) * x_t",
             tests=[f"{STEPS_DIFF}::test_one_ddpm_and_one_ddim_step_equal_the_formulas"]),
    Mutation(name="generation: ddim direction term uses abar_t for abar_t'", file=DDPM,
             old="(1 - ab_prev - sigma ** 2).sqrt() * eps", new="(1 - ab_t - sigma ** 2).sqrt() * eps",
             tests=[f"{STEPS_DIFF}::test_one_ddpm_and_one_ddim_step_equal_the_formulas"]),
    Mutation(name="generation: sampler's last step stops at t = 0 instead of the clean image", file=DDPM,
             old="prev_t = ts[i + 1] if i + 1 < len(ts) else -1", new="prev_t = ts[i + 1] if i + 1 < len(ts) else 0",
             tests=[LDM_SAMPLE]),
    Mutation(name="generation: leading timesteps run upwards", file=DDPM,
             old="return [i * ratio for i in range(steps)][::-1]", new="return [i * ratio for i in range(steps)]",
             tests=[LDM_SAMPLE]),
    # -- guidance and latent diffusion ---------------------------------------------------------------
    Mutation(name="generation: latent diffusion sampling swaps conditional and null branch", file=LDM,
             old="guided(self.eps, x, labels, null, guidance_scale, t)",
             new="guided(self.eps, x, null, labels, guidance_scale, t)", tests=[LDM_SAMPLE]),
    Mutation(name="generation: latent diffusion decodes z * scale instead of z / scale", file=LDM,
             old="self.autoencoder.decode(z / self.latent_scale)", new="self.autoencoder.decode(z * self.latent_scale)",
             tests=[LDM_SAMPLE]),
    Mutation(name="generation: latent diffusion samples at image resolution", file=LDM,
             old="return self.unet.cfg.in_channels, image_size // f, image_size // f",
             new="return self.unet.cfg.in_channels, image_size, image_size", tests=[LDM_SAMPLE]),
    Mutation(name="generation: latent diffusion encode forgets the latent scale", file=LDM,
             old="return self.autoencoder.encode(x) * self.latent_scale", new="return self.autoencoder.encode(x)",
             tests=[LDM_TRAIN]),
    Mutation(name="generation: latent diffusion drops the condition at eval, not in training", file=LDM,
             old="self.p_uncond) if self.training else labels", new="self.p_uncond) if not self.training else labels",
             tests=[LDM_TRAIN]),
    Mutation(name="generation: condition dropout keeps with probability p", file=GUIDE,
             old="device=labels.device) < p", new="device=labels.device) >= p", tests=[LDM_TRAIN]),
    Mutation(name="generation: guided() takes the null half as the conditional one", file=GUIDE,
             old="c, u = both.chunk(2)", new="u, c = both.chunk(2)", tests=[LDM_SAMPLE]),
    Mutation(name="generation: guidance extrapolates from the conditional prediction", file=GUIDE,
             old="return uncond + scale * (cond - uncond)", new="return cond + scale * (cond - uncond)",
             tests=[LDM_SAMPLE]),
    # -- MaskGIT -----------------------------------------------------------------------------------
    Mutation(name="generation: maskgit re-masks the most confident tokens", file=MASKGIT,
             old="remask = conf.argsort(1)[:, :n_next]", new="remask = conf.argsort(1, descending=True)[:, :n_next]",
             tests=[MG_DECODE]),
    Mutation(name="generation: maskgit fixed tokens get -inf confidence (re-masked first)", file=MASKGIT,
             old='torch.full_like(conf, float("inf"))', new='torch.full_like(conf, float("-inf"))',
             tests=[MG_DECODE]),
    Mutation(name="generation: maskgit resamples already fixed tokens", file=MASKGIT,
             old="sampled = torch.where(masked, sampled, ids)", new="sampled = sampled", tests=[MG_DECODE]),
    Mutation(name="generation: maskgit choice-temperature annealing reversed", file=MASKGIT,
             old="choice_temperature * (1 - (s + 1) / steps) * g", new="choice_temperature * ((s + 1) / steps) * g",
             tests=[MG_DECODE]),
    Mutation(name="generation: maskgit sampling temperature multiplies the logits", file=MASKGIT,
             old="F.log_softmax(logits / temperature, dim=-1)", new="F.log_softmax(logits * temperature, dim=-1)",
             tests=[MG_DECODE]),
    Mutation(name="generation: maskgit schedule one decoding step late", file=MASKGIT,
             old="after = math.floor(cosine_mask_ratio((step + 1) / steps) * n)",
             new="after = math.floor(cosine_mask_ratio(step / steps) * n)", tests=[MG_DECODE]),
    Mutation(name="generation: maskgit training loss on every token", file=MASKGIT,
             old="F.cross_entropy(logits[masked], ids[masked])",
             new="F.cross_entropy(logits.flatten(0, 1), ids.flatten())", tests=[MG_TRAIN]),
    Mutation(name="generation: maskgit training masks one token too many", file=MASKGIT,
             old="masked = rank < n_mask[:, None]", new="masked = rank <= n_mask[:, None]", tests=[MG_TRAIN]),
    Mutation(name="generation: maskgit training mask ratio linear, not cosine", file=MASKGIT,
             old="torch.ceil(cosine_mask_ratio(r) * self.N)", new="torch.ceil((1 - r) * self.N)", tests=[MG_TRAIN]),
    Mutation(name="generation: maskgit training never drops the class", file=MASKGIT,
             old="labels = drop_condition(labels, self.null_id, self.cfg.p_uncond, generator)",
             new="drop_condition(labels, self.null_id, self.cfg.p_uncond, generator)", tests=[MG_TRAIN]),
    # -- AR image tokens -----------------------------------------------------------------------------
    Mutation(name="generation: ar image input shifted the wrong way (sees its target)", file=AR,
             old="logits = self.decoder(input_ids=seq[:, :-1]).logits", new="logits = self.decoder(input_ids=seq[:, 1:]).logits",
             tests=[AR_LOSS]),
    Mutation(name="generation: ar image target not shifted", file=AR,
             old="F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))",
             new="F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, :-1].reshape(-1))", tests=[AR_LOSS]),
    # -- unified models ------------------------------------------------------------------------------
    Mutation(name="generation: emu3 vision weight on the text targets", file=EMU3,
             old="w = torch.where(vis, vision_weight, 1.0)", new="w = torch.where(vis, 1.0, vision_weight)",
             tests=[EMU3_STEP]),
    Mutation(name="generation: emu3 vision mask not shifted with the targets", file=EMU3,
             old="target, vis = labels[:, 1:], vision[:, 1:]", new="target, vis = labels[:, 1:], vision[:, :-1]",
             tests=[EMU3_STEP]),
    Mutation(name="generation: emu3 image rows written column-major", file=EMU3,
             old="self.header(h, w) + rows.flatten().tolist()", new="self.header(h, w) + rows.t().flatten().tolist()",
             tests=[EMU3_STEP]),
    Mutation(name="generation: unified pair rows never train the first token after bos", file=UNI,
             old="return ids, [-100] + ids[1:]", new="return ids, [-100, -100] + ids[2:]", tests=[EMU3_STEP]),
    Mutation(name="generation: janus code loss reads the hidden state one position late", file=JANUS,
             old="target, h = labels[:, 1:], out.hidden_states[:, :-1]",
             new="target, h = labels[:, 1:], out.hidden_states[:, 1:]", tests=[JANUS_STEP]),
    Mutation(name="generation: janus t2i row also trains <boi> as a text target", file=JANUS,
             old="return ids, [-100] * (len(ids) - codes.numel()) + ids[-codes.numel():]",
             new="return ids, [-100] * (len(ids) - codes.numel() - 1) + ids[-codes.numel() - 1:]", tests=[JANUS_STEP]),
    Mutation(name="generation: showo predicts image tokens it can see (no <mask> applied)", file=SHOWO,
             old="logits = self.logits(input_ids.masked_fill(masked, v.mask), keep)",
             new="logits = self.logits(input_ids, keep)", tests=[SHOWO_STEP]),
    Mutation(name="generation: showo text loss not shifted", file=SHOWO,
             old="F.cross_entropy(logits[:, :-1][is_text].float(), text_target[is_text])",
             new="F.cross_entropy(logits[:, 1:][is_text].float(), text_target[is_text])", tests=[SHOWO_STEP]),
    Mutation(name="generation: showo masks one code too many", file=SHOWO,
             old="masked = is_code & (rank < n_mask)", new="masked = is_code & (rank <= n_mask)", tests=[SHOWO_STEP]),
    Mutation(name="generation: showo omni-attention without full attention inside an image", file=SHOWO,
             old="mask = (causal[None] | same_image) & keep[:, None, :]", new="mask = causal[None] & keep[:, None, :]",
             tests=["tests/unit/test_showo.py::test_image_tokens_see_later_image_tokens_but_text_does_not_see_the_future"]),
    Mutation(name="generation: unified caption dropout also empties image-to-text rows", file=UNI_TRAIN,
             old='drop = task == "t2i" and rng.random() < p_uncond', new="drop = rng.random() < p_uncond",
             tests=[f"{STEPS_UNI}::test_caption_dropout_only_empties_text_to_image_rows"]),
    Mutation(name="generation: showo guidance with cond and uncond rows swapped", file=SHOWO,
             old="guide_weight(logits[:B], logits[B:], guidance_weight)",
             new="guide_weight(logits[B:], logits[:B], guidance_weight)", tests=[SHOWO_DECODE]),
    Mutation(name="generation: showo decoding re-masks the most confident codes", file=SHOWO,
             old="remask = conf.argsort(1)[:, :masked_after_step", new="remask = conf.argsort(1, descending=True)[:, :masked_after_step",
             tests=[SHOWO_DECODE]),
    Mutation(name="generation: showo decoding lets fixed codes be re-masked", file=SHOWO,
             old="* (1 - (s + 1) / steps) * g, math.inf)", new="* (1 - (s + 1) / steps) * g, -math.inf)",
             tests=[SHOWO_DECODE]),
    Mutation(name="generation: showo unconditional rows keep the caption", file=SHOWO,
             old="rows += [[BOS] + [PAD] * (len(r) - 1) for r in rows]", new="rows += [list(r) for r in rows]",
             tests=[SHOWO_DECODE]),
    Mutation(name="generation: seed contrastive term on the first causal query", file=SEED,
             old="contrastive = info_nce(self.contrast(q[:, -1], caption_embeds), caption_ids)",
             new="contrastive = info_nce(self.contrast(q[:, 0], caption_embeds), caption_ids)", tests=[SEED_STEP]),
    Mutation(name="generation: seed reconstruction bypasses the quantizer", file=SEED,
             old="reconstruction = F.mse_loss(self.embedding_from(quant.z_q), image_embeds)",
             new="reconstruction = F.mse_loss(self.embedding_from(self.down(q).transpose(1, 2)[..., None]), image_embeds)",
             tests=[SEED_STEP]),
    Mutation(name="generation: seed loss drops the VQ term", file=SEED,
             old="SeedOutput(contrastive + quant.loss + reconstruction,", new="SeedOutput(contrastive + reconstruction,",
             tests=[SEED_STEP]),
    Mutation(name="generation: emu3/seed-llama guidance takes the caption-free rows as conditional", file=UNI,
             old="cond, uncond = (logits[:B], logits[B:])", new="cond, uncond = (logits[B:], logits[:B])",
             tests=["tests/unit/test_emu3.py::test_cfg_generation_uses_the_unconditional_rows",
                    "tests/unit/test_seed_llama.py::test_unconditional_prompt_is_bos_img_or_the_negative_caption"]),
    Mutation(name="generation: janus guidance takes the uncond rows as conditional", file=JANUS,
             old="pick(logits[0::2], logits[1::2], guidance_scale", new="pick(logits[1::2], logits[0::2], guidance_scale",
             tests=["tests/unit/test_janus.py::test_guidance_zero_ignores_the_caption"]),
    # -- the SEED codec recipe ---------------------------------------------------------------------------
    Mutation(name="generation: seed recipe caption ids in the wrong class order", file="ocellus/train/seed_tokenizer_run.py",
             old="cap_id, cap_id_t = cs * len(SHAPES) + ks,", new="cap_id, cap_id_t = ks * len(colours) + cs,",
             tests=["tests/unit/test_seed_tokenizer_run_wiring.py"]),
    Mutation(name="generation: seed recipe trains the ViT in the tokenizer phase", file="ocellus/train/seed_tokenizer_run.py",
             old='stage = {p: ("frozen" if p == "vision" else "full") for p in tok.parts()}',
             new='stage = {p: "full" for p in tok.parts()}', tests=["tests/unit/test_seed_tokenizer_run_wiring.py"]),
]
