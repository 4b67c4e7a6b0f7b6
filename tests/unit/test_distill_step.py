"""Distillation, one real step (Hinton et al. 2015) written out here on the Distiller's own models:
    loss = alpha T^2 mean_t KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) CE(z_s, y)
over the positions whose NEXT label is trained (position t predicts token t + 1); the teacher is frozen
(no gradient, unchanged by the step); the student's SGD step equals the hand gradient."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.train.distill import DistillConfig, Distiller, shrink_decoder
from _posttrain_tiny import text_batch, tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_distill_step_is_the_hand_loss_and_gradient():
    teacher = tiny_decoder(seed=0, layers=3)
    student = shrink_decoder(teacher, (0, 2))
    with torch.no_grad():                                                     # make the student differ
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = text_batch([[5, 6, 7], [8, 9]], [[20, 21, 1], [22, 1]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100                                                     # the prompt: not trained
    labels[:, -3:][batch["completion_mask"] == 0] = -100                     # completion padding: not trained
    T, alpha = 3.0, 0.7
    distiller = Distiller(student, teacher, DistillConfig(temperature=T, alpha=alpha))
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    out = distiller(labels=labels, **inputs)

    zs = student(**inputs).logits                                             # [B, L, V]
    with torch.no_grad():
        zt = teacher(**inputs).logits
    soft, hard, n = 0.0, 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = labels[b, t + 1].item()
            if y == -100:
                continue
            p_t, log_p_s = F.softmax(zt[b, t] / T, -1), F.log_softmax(zs[b, t] / T, -1)
            soft = soft + (p_t * (p_t.log() - log_p_s)).sum()               # KL(teacher || student)
            hard = hard - F.log_softmax(zs[b, t], -1)[y]
            n += 1
    assert n == 5                                                             # 3 + 2 completion tokens
    loss = alpha * T ** 2 * soft / n + (1 - alpha) * hard / n
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=1e-5)

    hand = torch.autograd.grad(loss, list(student.parameters()))
    lr = 0.5
    opt = torch.optim.SGD(distiller.parameters(), lr=lr)
    out.loss.backward()
    opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    for (name, p), g in zip(student.named_parameters(), hand):
        torch.testing.assert_close(p.detach(), start[name] - lr * g, atol=1e-6, rtol=1e-5, msg=name)
    for name, p in teacher.named_parameters():
        assert torch.equal(p, teacher_before[name]), name
