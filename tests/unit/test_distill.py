"""Distillation: the temperature-softened KL with T^2 scaling by hand and as a property (gradient scale
independent of T), the hard-label mix, and a student cut from the teacher's layers that generates,
saves and reloads."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.train.distill import DistillConfig, Distiller, distill_loss, shrink_decoder
from _posttrain_tiny import text_batch, tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(seed, shape=(2, 4, 7)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


LABELS = torch.tensor([[-100, 3, 4, -100], [-100, -100, 1, 2]])   # positions 0,1 and 1,2 predict trained tokens


def test_soft_term_is_t_squared_kl_by_hand():
    s, t = _logits(0), _logits(1)
    T = 3.0
    loss, parts = distill_loss(s, t, LABELS, temperature=T, alpha=1.0)
    rows = [(0, 0), (0, 1), (1, 1), (1, 2)]
    kl = 0.0
    for b, i in rows:
        p, q = F.softmax(t[b, i] / T, -1), F.softmax(s[b, i] / T, -1)
        kl += float((p * (p / q).log()).sum())
    assert loss.item() == pytest.approx(T * T * kl / len(rows), rel=1e-5)
    hard_only, _ = distill_loss(s, t, LABELS, temperature=T, alpha=0.0)
    ce = F.cross_entropy(torch.stack([s[b, i] for b, i in rows]), torch.tensor([3, 4, 1, 2]))
    assert hard_only.item() == pytest.approx(ce.item(), rel=1e-6)
    mixed, _ = distill_loss(s, t, LABELS, temperature=T, alpha=0.3)
    assert mixed.item() == pytest.approx(0.3 * parts["soft"] + 0.7 * parts["hard"], rel=1e-6)
    same, same_parts = distill_loss(t, t, LABELS, temperature=T, alpha=1.0)
    assert same_parts["soft"] == pytest.approx(0.0, abs=1e-6)


def test_t_squared_keeps_the_soft_gradient_scale_as_t_grows():
    # Hinton et al. sec. 2: d KL_T / d z_s ~ (z_s - z_t) / (N T^2) at high T, so T^2 * KL_T has a
    # gradient that no longer depends on T
    t = _logits(1) * 0.5
    norms = []
    for T in (4.0, 8.0, 16.0):
        s = (_logits(0) * 0.5).requires_grad_(True)
        distill_loss(s, t, LABELS, temperature=T, alpha=1.0)[0].backward()
        norms.append(s.grad.norm().item())
    assert norms[1] == pytest.approx(norms[0], rel=0.05) and norms[2] == pytest.approx(norms[1], rel=0.02)


def test_bad_inputs():
    with pytest.raises(InputError, match="no trained token"):
        distill_loss(_logits(0), _logits(1), torch.full((2, 4), -100))
    with pytest.raises(InputError, match="vocabularies must match"):
        distill_loss(_logits(0), _logits(1, (2, 4, 9)), LABELS)
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(temperature=0)
    with pytest.raises(ConfigError, match="distinct indices"):
        shrink_decoder(tiny_decoder(layers=2), (0, 5))


def test_student_from_teacher_layers_generates_and_learns():
    teacher = tiny_decoder(layers=4)
    student = shrink_decoder(teacher, (0, 2))
    assert len(student.layers) == 2 and student.config.num_hidden_layers == 2
    assert torch.equal(student.layers[1].mlp.down_proj.weight, teacher.layers[2].mlp.down_proj.weight)
    assert student.layers[1].self_attn.layer_idx == 1          # the KV cache slot follows the new stack
    ids = torch.tensor([[5, 6, 7]])
    full = student(input_ids=ids).logits
    gen = student.generate(ids, max_new_tokens=3)               # through the cache
    assert gen.shape == (1, 6) and gen[0, 3].item() == full[0, -1].argmax().item()
    batch = text_batch([[5, 6, 7], [8, 9]], [[20, 21, 1], [22, 1]])
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100
    labels[batch["attention_mask"] == 0] = -100
    distiller = Distiller(student, teacher, DistillConfig(temperature=2.0, alpha=1.0))
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    opt = torch.optim.SGD(distiller.parameters(), lr=0.5)
    first = distiller(labels=labels, **inputs)
    for _ in range(3):
        out = distiller(labels=labels, **inputs)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    assert distiller(labels=labels, **inputs).loss.item() < first.loss.item()
    assert not any(p.requires_grad for p in teacher.parameters())


def test_vlm_student_saves_and_reloads(tmp_path):
    import ocellus
    teacher = ocellus.load(ocellus.default_model_dir())
    student = shrink_decoder(teacher, (1, 3))
    ocellus.save(student, tmp_path / "student")
    again = ocellus.load(tmp_path / "student")
    assert len(again.language_model.layers) == 2
    ids = torch.tensor([[10, 11, 12]])
    assert torch.allclose(again(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-5)
