"""Losses against formulas computed by hand: Hinton KD at several τ and α, label smoothing,
MixUp / CutMix, the Gaussian pair of XCL, Self-Guidance's KL, pick's ranking and KL ratio."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from student.losses import (
    cutmix,
    cutmix_loss,
    gaussian_kl,
    gaussian_nll,
    kd_loss,
    mixed_label_loss,
    mixup,
    self_guidance_kl,
    smoothed_cross_entropy,
)
from student.pick import kl_ratio, pick_hardest, pick_scores, scoring_forward


def np_log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def kd_by_hand(z, logp, labels, tau, alpha):
    """Per sample (1 − α)·(−log softmax(z)[y]) if y ≥ 0, + α·τ²·Σ p (log p − log q); batch mean."""
    total = 0.0
    for i, y in enumerate(labels):
        p = np.exp(logp[i] / tau) / np.exp(logp[i] / tau).sum()
        q = np.exp(z[i] / tau) / np.exp(z[i] / tau).sum()
        kl = sum(p[c] * (np.log(p[c]) - np.log(q[c])) for c in range(len(p)) if p[c] > 0)
        s = np.exp(z[i]) / np.exp(z[i]).sum()
        ce = -np.log(s[y]) if y >= 0 else 0.0
        total += (1 - alpha) * ce + alpha * tau**2 * kl
    return total / len(labels)


def batch(seed=0, n=7, classes=5):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, classes))
    logp = np_log_softmax(rng.normal(scale=3.0, size=(n, classes)))
    logp[0, 1] = -1e4  # the stored floor: a class the teacher rules out
    labels = np.array([3, -1, 0, -1, -1, 4, 2])[:n]
    return z, logp, labels


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_kd_loss_matches_the_formula(tau, alpha):
    z, logp, labels = batch()
    got = kd_loss(torch.tensor(z), torch.tensor(logp, dtype=torch.float16).float(), torch.tensor(labels),
                  tau, alpha)
    want = kd_by_hand(z, np.float16(logp).astype(np.float64), labels, tau, alpha)
    assert got.shape == ()
    assert abs(got.item() - want) < 1e-4 * max(1.0, abs(want))


def test_unlabelled_samples_get_the_kl_term_only_whatever_shares_their_batch():
    z, logp, labels = batch()
    z, logp = torch.tensor(z, dtype=torch.float32), torch.tensor(logp, dtype=torch.float32)
    alpha, tau = 0.3, 2.0
    whole = kd_loss(z, logp, torch.tensor(labels), tau, alpha).item() * len(labels)
    # the sum over samples is the sum of each sample alone: no weight depends on the batch
    alone = sum(kd_loss(z[i:i + 1], logp[i:i + 1], torch.tensor(labels[i:i + 1]), tau, alpha).item()
                for i in range(len(labels)))
    assert whole == pytest.approx(alone, rel=1e-5)
    unlabelled = torch.tensor(labels) < 0
    kl_only = kd_loss(z[unlabelled], logp[unlabelled], torch.full((int(unlabelled.sum()),), -1), tau, 1.0)
    assert kd_loss(z[unlabelled], logp[unlabelled], torch.tensor(labels)[unlabelled], tau, alpha).item() == \
        pytest.approx(alpha * kl_only.item(), rel=1e-6)


def test_samples_without_a_teacher_target_get_the_cross_entropy_only():
    z, logp, labels = batch()
    z, logp, labels = torch.tensor(z), torch.tensor(logp), torch.tensor([3, 1, 0, 2, 2, 4, 2])
    no_target = torch.zeros(len(labels), dtype=torch.bool)
    got = kd_loss(z, logp, labels, 4.0, 0.25, has_target=no_target).item()
    assert got == pytest.approx(0.75 * F.cross_entropy(z, labels).item(), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_kd_loss_is_zero_when_the_student_matches_the_teacher(tau):
    _, logp, labels = batch()
    logp = torch.tensor(logp, dtype=torch.float32)
    assert abs(kd_loss(logp.clone(), logp, torch.tensor(labels), tau, 1.0).item()) < 1e-6
    assert kd_loss(logp + torch.randn_like(logp), logp, torch.tensor(labels), tau, 1.0).item() > 1e-3


def test_kd_gradient_is_tau_times_q_minus_p_over_n():
    z, logp, labels = batch(seed=3)
    tau = 2.0
    logits = torch.tensor(z, requires_grad=True)
    kd_loss(logits, torch.tensor(logp), torch.tensor(labels), tau, 1.0).backward()
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


def test_label_smoothing_matches_xcl_eq_1():
    logits, labels, eps = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 4, 2, 2, 1, 3]), 0.18
    target = torch.full((6, 5), eps / 4, dtype=torch.float64)
    target[torch.arange(6), labels] = 1 - eps
    want = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1)
    torch.testing.assert_close(smoothed_cross_entropy(logits, labels, eps), want)
    plain = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(smoothed_cross_entropy(logits, labels), plain)


def test_mixup_mixes_pixels_and_labels_linearly():
    images, labels = torch.randn(6, 1, 3, 3), torch.arange(6)
    mixed, a, b, lam = mixup(images, labels, torch.Generator().manual_seed(4))
    assert 0 <= lam <= 1 and torch.equal(a, labels) and sorted(b.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[b])
    logits = torch.randn(6, 6, dtype=torch.float64)
    one_hot = lam * F.one_hot(a, 6) + (1 - lam) * F.one_hot(b, 6)
    want = -(one_hot * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert mixed_label_loss(logits, a, b, lam).item() == pytest.approx(want.item(), rel=1e-10)


@pytest.mark.parametrize("dims", [1, 3])
def test_gaussian_nll_and_kl_match_torch_distributions(dims):
    gen = torch.Generator().manual_seed(dims)
    n = 9
    mu_t, mu_s, y = (torch.randn(n, dims, generator=gen, dtype=torch.float64) for _ in range(3))
    s_t, s_s = (torch.randn(n, 1, generator=gen, dtype=torch.float64) for _ in range(2))

    def normal(mu, s):
        return torch.distributions.Independent(torch.distributions.Normal(mu, (0.5 * s).exp().expand_as(mu)), 1)

    kl = torch.distributions.kl_divergence(normal(mu_t, s_t), normal(mu_s, s_s)).mean()
    assert gaussian_kl(mu_t, s_t, mu_s, s_s).item() == pytest.approx(kl.item(), rel=1e-10)
    const = 0.5 * dims * np.log(2 * np.pi)  # eq 5 drops the constant of the log-likelihood
    nll = -normal(mu_s, s_s).log_prob(y).mean() - const
    assert gaussian_nll(mu_s, s_s, y).item() == pytest.approx(nll.item(), rel=1e-10)
    if dims == 1:  # XCL eq 6 as printed
        by_hand = 0.5 * (torch.exp(s_t - s_s) + torch.exp(-s_s) * (mu_t - mu_s) ** 2 - (s_t - s_s) - 1).mean()
        assert gaussian_kl(mu_t, s_t, mu_s, s_s).item() == pytest.approx(by_hand.item(), rel=1e-12)
    assert gaussian_kl(mu_t, s_t, mu_t, s_t).item() == pytest.approx(0.0, abs=1e-12)


def test_self_guidance_kl_targets_the_detached_full_network():
    full = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    sub = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    tau = 3.0
    p = torch.softmax(full / tau, dim=1)
    want = tau**2 * (p * (torch.log(p) - torch.log_softmax(sub / tau, dim=1))).sum(dim=1).mean()
    got = self_guidance_kl(full, sub, tau)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    got.backward()
    assert full.grad is None and sub.grad.abs().sum() > 0


def test_pick_keeps_the_hardest_candidates_by_each_criterion():
    z, logp, _ = batch(seed=5)
    z, logp = torch.tensor(z), torch.tensor(logp)
    tau = 4.0
    p = np.exp(np_log_softmax(logp.numpy() / tau))
    q_log = np_log_softmax(z.numpy() / tau)
    d_by_hand = (p * (np.log(np.maximum(p, 1e-300)) - q_log)).sum(axis=1)
    scores, d = pick_scores(z, logp, tau, "kl")
    np.testing.assert_allclose(d.numpy(), d_by_hand, rtol=1e-6)
    picked = pick_hardest(scores, 3)
    assert sorted(picked.tolist()) == sorted(np.argsort(-d_by_hand)[:3].tolist())
    assert kl_ratio(d, picked) == pytest.approx(d_by_hand[picked.numpy()].mean() / d_by_hand.mean())
    assert kl_ratio(d, picked) > 1.0
    t_scores, _ = pick_scores(z, logp, tau, "teacher_entropy")
    np.testing.assert_allclose(t_scores.numpy(), -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1), rtol=1e-6)
    s_scores, _ = pick_scores(z, logp, tau, "student_entropy")
    np.testing.assert_allclose(s_scores.numpy(), -(np.exp(q_log) * q_log).sum(axis=1), rtol=1e-6)


def test_pick_keeps_the_originals_at_their_share_and_picks_among_the_mixes():
    """Seed 004 §3.2 keeps every x and picks among the x′; the real split's samples (no target)
    used to rank last and be dropped whatever their share."""
    scores = torch.tensor([0.29, 0.40, 0.17, 0.41, 0.34, 0.168, 0.03], dtype=torch.float64)
    mixes = torch.tensor([True, False, True, True, False, True, True])  # x at 1 and 4
    # ratio 1: every x is kept, the 3 hardest x′ fill the batch
    assert pick_hardest(scores, 5, mixes, ratio=1.0).tolist() == [0, 1, 2, 3, 4]
    # ratio 2: the x keep half their number (the first), the 4 hardest x′ the rest
    assert pick_hardest(scores, 5, mixes, ratio=2.0).tolist() == [0, 1, 2, 3, 5]
    # x only (no x′ marked): every candidate competes, as without the mask
    assert pick_hardest(scores, 3, torch.zeros(7, dtype=torch.bool), 2.0).tolist() == [1, 3, 4]
    d = scores.clone()
    picked = pick_hardest(scores, 5, mixes, ratio=2.0)
    expected = float(d[[0, 2, 3, 5]].mean()) / float(d[mixes].mean())
    assert kl_ratio(d, picked, mixes) == pytest.approx(expected)


def test_scoring_forward_leaves_batch_norm_statistics_untouched():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = scoring_forward(model, torch.randn(8, 1, 5, 5))
    assert not out.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
