"""KD loss against the formula computed by hand; CutMix box area, labels and loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from student.losses import cutmix, cutmix_loss, kd_loss


def np_log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def kd_by_hand(z, logp, labels, tau, alpha):
    """Per sample τ²·Σ p (log p − log q) + α·(−log softmax(z)[y]) if y ≥ 0; mean over the batch."""
    log_p = np_log_softmax(logp / tau)
    log_q = np_log_softmax(z / tau)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    log_s = np_log_softmax(z)
    ce = np.array([-log_s[i, y] if y >= 0 else 0.0 for i, y in enumerate(labels)])
    return float(np.mean(tau**2 * kl + alpha * ce))


def batch(seed=0, n=7, classes=5):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, classes))
    logp = np_log_softmax(rng.normal(scale=3.0, size=(n, classes)))
    logp[0, 1] = -1e4  # the stored floor: a class the teacher rules out
    labels = np.array([3, -1, 0, -1, -1, 4, 2])[:n]
    return z, logp, labels


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_kd_loss_matches_the_formula(tau, alpha):
    z, logp, labels = batch()
    got = kd_loss(torch.tensor(z), torch.tensor(logp, dtype=torch.float16).float(), torch.tensor(labels),
                  tau, alpha)
    want = kd_by_hand(z, np.float16(logp).astype(np.float64), labels, tau, alpha)
    assert got.shape == ()
    assert abs(got.item() - want) < 1e-4 * max(1.0, abs(want))


def test_unlabelled_samples_add_no_cross_entropy_but_count_in_the_mean():
    z, logp, labels = batch()
    args = (torch.tensor(z, dtype=torch.float32), torch.tensor(logp, dtype=torch.float32))
    ce_part = kd_loss(*args, torch.tensor(labels), 1.0, 1.0) - kd_loss(*args, torch.tensor(labels), 1.0, 0.0)
    labelled = labels >= 0
    want = F.cross_entropy(args[0][labelled], torch.tensor(labels[labelled]), reduction="sum") / len(labels)
    assert ce_part.item() == pytest.approx(want.item(), rel=1e-5)
    all_unlabelled = torch.full((len(labels),), -1)
    without = kd_loss(*args, all_unlabelled, 1.0, 0.0).item()
    assert kd_loss(*args, all_unlabelled, 1.0, 5.0).item() == pytest.approx(without)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_kd_loss_is_zero_when_the_student_matches_the_teacher(tau):
    _, logp, labels = batch()
    logp = torch.tensor(logp, dtype=torch.float32)
    assert abs(kd_loss(logp.clone(), logp, torch.tensor(labels), tau, 0.0).item()) < 1e-6
    assert kd_loss(logp + torch.randn_like(logp), logp, torch.tensor(labels), tau, 0.0).item() > 1e-3


def test_kd_gradient_is_tau_times_q_minus_p_over_n():
    z, logp, labels = batch(seed=3)
    tau = 2.0
    logits = torch.tensor(z, requires_grad=True)
    kd_loss(logits, torch.tensor(logp), torch.tensor(labels), tau, 0.0).backward()
    p = np.exp(np_log_softmax(logp / tau))
    q = np.exp(np_log_softmax(z / tau))
    assert torch.isfinite(logits.grad).all()
    np.testing.assert_allclose(logits.grad.numpy(), tau * (q - p) / len(z), atol=1e-10)


@pytest.mark.parametrize("seed", range(12))
def test_cutmix_box_area_is_one_minus_lambda(seed):
    n, height, width = 6, 9, 7
    labels = torch.arange(n)
    images = (labels + 1).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, height, width).contiguous()
    mixed, labels_a, labels_b, lam = cutmix(images, labels, torch.Generator().manual_seed(seed))
    assert 0.0 <= lam <= 1.0
    assert torch.equal(labels_a, labels)
    assert sorted(labels_b.tolist()) == list(range(n))  # a permutation of the batch
    for i in range(n):
        changed = (mixed[i] != images[i]).all(dim=0)  # same box in every channel
        assert torch.equal(changed, (mixed[i] != images[i]).any(dim=0))
        if labels_b[i] == labels_a[i]:
            assert not changed.any()  # its own partner: nothing visible changes
            continue
        assert changed.sum().item() == round((1 - lam) * height * width)
        assert (mixed[i][:, changed] == labels_b[i] + 1).all()  # the pasted pixels come from b
        assert (mixed[i][:, ~changed] == labels_a[i] + 1).all()
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert changed.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a box


def test_cutmix_lambda_spans_zero_to_one_and_is_reproducible():
    images, labels = torch.zeros(4, 1, 32, 32), torch.arange(4)
    lams = [cutmix(images, labels, torch.Generator().manual_seed(s))[3] for s in range(400)]
    # λ ~ U[0, 1] is drawn, then recomputed from the clipped box: clipping only shrinks the box,
    # so the returned λ is shifted up from the uniform's mean 0.5 (~0.7 at this size).
    assert 0.5 < np.mean(lams) < 0.8 and min(lams) < 0.3 and max(lams) > 0.95
    again = [cutmix(images, labels, torch.Generator().manual_seed(s))[3] for s in range(400)]
    assert lams == again


def test_cutmix_loss_weights_the_two_cross_entropies():
    logits = torch.randn(5, 4)
    a, b = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([3, 3, 1, 0, 2])
    log_s = torch.log_softmax(logits, dim=1)
    want = -(0.3 * log_s[torch.arange(5), a] + 0.7 * log_s[torch.arange(5), b]).mean()
    assert cutmix_loss(logits, a, b, 0.3).item() == pytest.approx(want.item(), rel=1e-6)
