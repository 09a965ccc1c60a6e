"""MMD checked against hand computation, invariants, and the closed-form gradient of Eq. (7)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.reference import class_conditional_mmd_loop
from itra_tune import mmd

# Three 1-D points: S1 = {0, 1}, S2 = {3}. Pooled squared distances: 1 (0-1), 9 (0-3), 4 (1-3).
H1 = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
H2 = torch.tensor([[3.0]], dtype=torch.float64)


def hand_mmd(kernel) -> float:
    # mean K(S1,S1) = (2 k(0) + 2 k(1)) / 4;  mean K(S2,S2) = k(0);  mean K(S1,S2) = (k(9) + k(4)) / 2
    q = (2 * kernel(0) + 2 * kernel(1)) / 4 + kernel(0) - 2 * (kernel(9) + kernel(4)) / 2
    return math.sqrt(q)


@pytest.mark.parametrize(
    ("scheme", "sigma", "kernel"),
    [
        ("median", None, lambda d: math.exp(-d / 4)),  # off-diagonal {1, 9, 4}: median 4
        ("mean", None, lambda d: math.exp(-d / (14 / 3))),  # mean (1 + 9 + 4) / 3
        ("fixed", 2.0, lambda d: math.exp(-d / 2)),
        ("multiscale", None, lambda d: sum(math.exp(-d / (4 * 2.0**k)) for k in (-2, -1, 0, 1, 2))),
        ("multiscale", 1.0, lambda d: sum(math.exp(-d / (2.0**k)) for k in (-2, -1, 0, 1, 2))),
    ],
)
def test_matches_hand_computation(scheme, sigma, kernel):
    got = mmd.mmd(H1, H2, bandwidth=scheme, sigma=sigma)
    assert got.item() == pytest.approx(hand_mmd(kernel), rel=1e-9)


def test_median_bandwidth_of_hand_example():
    d2 = mmd.pairwise_sq_dists(torch.cat([H1, H2]))
    assert mmd.kernel_bandwidth(d2, "median").item() == 4.0
    assert mmd.kernel_bandwidth(d2, "mean").item() == pytest.approx(14 / 3)


def test_identical_sets_give_zero_with_finite_gradient():
    x = torch.randn(16, 8, requires_grad=True)
    value = mmd.mmd(x, x)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(x.grad).all()
    y = torch.randint(0, 3, (16,))
    x.grad = None
    cc = mmd.class_conditional_mmd(x, y, x, y, num_classes=3)
    cc.backward()
    assert cc.item() == 0.0 and torch.isfinite(x.grad).all()


def test_symmetric_and_permutation_invariant():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 5, generator=g), torch.randn(9, 5, generator=g) + 0.5
    for scheme in ("median", "mean", "multiscale"):
        ab, ba = mmd.mmd(a, b, scheme), mmd.mmd(b, a, scheme)
        assert ab.item() == pytest.approx(ba.item(), rel=1e-5)
        perm = mmd.mmd(a[torch.randperm(12, generator=g)], b[torch.randperm(9, generator=g)], scheme)
        assert perm.item() == pytest.approx(ab.item(), rel=1e-5)


def test_different_distributions_score_higher():
    g = torch.Generator().manual_seed(1)
    a, a2 = torch.randn(64, 4, generator=g), torch.randn(64, 4, generator=g)
    shifted = torch.randn(64, 4, generator=g) + 2.0
    for scheme in ("median", "mean", "multiscale"):
        assert mmd.mmd(a, shifted, scheme) > 3 * mmd.mmd(a, a2, scheme)


def test_gradient_equals_closed_form_eq7():
    """Autograd against the analytic gradient of MMD w.r.t. h_i in S1, at a fixed sigma.

    Differentiating MMD = sqrt(Q) gives
        dMMD/dh_i = -(2 / MMD) [ 1/m1^2 sum_j K(h_i, h1_j) (h_i - h1_j)/sigma
                                 - 1/(m1 m2) sum_j K(h_i, h2_j) (h_i - h2_j)/sigma ],
    which is Eq. (7) of the paper with the cross term's coefficient 1/(m1 m2): the printed Eq. (7)
    carries 2/(m1 m2) there, a factor the derivation does not produce (it drops the symmetric factor 2
    of the first term and keeps the one of the second).
    """
    g = torch.Generator().manual_seed(2)
    sigma = 3.0
    h1 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.7
    value = mmd.mmd(h1, h2, bandwidth="fixed", sigma=sigma)
    (grad,) = torch.autograd.grad(value, h1)
    m1, m2 = h1.shape[0], h2.shape[0]
    with torch.no_grad():
        for i in range(m1):
            d1, d2 = h1[i] - h1, h1[i] - h2  # (m1, D), (m2, D)
            k1 = torch.exp(-(d1**2).sum(1) / sigma)[:, None]
            k2 = torch.exp(-(d2**2).sum(1) / sigma)[:, None]
            closed = -(2 / value) * ((k1 * d1 / sigma).sum(0) / m1**2 - (k2 * d2 / sigma).sum(0) / (m1 * m2))
            torch.testing.assert_close(grad[i], closed)


def test_sigma_is_not_backpropagated():
    g = torch.Generator().manual_seed(3)
    h1 = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(8, 4, generator=g, dtype=torch.float64)
    d2 = mmd.pairwise_sq_dists(torch.cat([h1, h2]))
    s = mmd.kernel_bandwidth(d2, "median")
    assert not s.requires_grad
    (g_median,) = torch.autograd.grad(mmd.mmd(h1, h2, "median"), h1)
    (g_fixed,) = torch.autograd.grad(mmd.mmd(h1, h2, "fixed", sigma=s.item()), h1)
    torch.testing.assert_close(g_median, g_fixed)


@pytest.mark.parametrize("scheme", ["median", "mean", "multiscale"])
def test_class_conditional_equals_per_class_loop(scheme):
    g = torch.Generator().manual_seed(4)
    k = 10
    h1, h2 = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(30, 6, generator=g, dtype=torch.float64)
    y1 = torch.randint(0, 5, (40,), generator=g)  # classes 0-4
    y2 = torch.randint(2, 8, (30,), generator=g)  # classes 2-7: 0, 1, 5, 6, 7 missing from one batch
    fast = mmd.class_conditional_mmd(h1, y1, h2, y2, k, bandwidth=scheme)
    slow = class_conditional_mmd_loop(h1, y1, h2, y2, k, bandwidth=scheme)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-9)
    # and by hand for the loop's meaning: the mean over the classes present in both batches
    s = mmd.kernel_bandwidth(mmd.pairwise_sq_dists(torch.cat([h1, h2])), scheme).item()
    per_scheme = "multiscale" if scheme == "multiscale" else "fixed"
    expected = sum(mmd.mmd(h1[y1 == c], h2[y2 == c], per_scheme, s).item() for c in (2, 3, 4)) / 3
    assert fast.item() == pytest.approx(expected, rel=1e-9)


def test_class_conditional_gradients_match_loop():
    g = torch.Generator().manual_seed(5)
    h1 = torch.randn(24, 4, generator=g, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(24, 4, generator=g, dtype=torch.float64)
    y1, y2 = torch.randint(0, 4, (24,), generator=g), torch.randint(0, 4, (24,), generator=g)
    (fast,) = torch.autograd.grad(mmd.class_conditional_mmd(h1, y1, h2, y2, 4, "fixed", 2.0), h1)
    (slow,) = torch.autograd.grad(class_conditional_mmd_loop(h1, y1, h2, y2, 4, "fixed", 2.0), h1)
    torch.testing.assert_close(fast, slow)


def test_no_shared_class_gives_zero():
    h = torch.randn(4, 2)
    value = mmd.class_conditional_mmd(h, torch.tensor([0, 0, 1, 1]), h, torch.tensor([2, 2, 3, 3]), 4)
    assert value.item() == 0.0


@pytest.mark.parametrize(("scheme", "sigma", "message"), [
    ("gaussian", None, "unknown bandwidth scheme"),
    ("fixed", None, "sigma is required"),
    ("fixed", -1.0, "must be positive"),
])
def test_bad_bandwidth_arguments(scheme, sigma, message):
    with pytest.raises(ValueError, match=message):
        mmd.mmd(torch.randn(3, 2), torch.randn(3, 2), scheme, sigma)



def test_detach_scale_keeps_the_value_and_takes_the_scale_out_of_the_gradient():
    g = torch.Generator().manual_seed(11)
    h1 = torch.randn(12, 5, generator=g, requires_grad=True)
    h2 = torch.randn(12, 5, generator=g, requires_grad=True)
    y = torch.arange(12) % 3

    def match(weight):
        a, b = mmd.detach_scale(h1, h2, weight) if weight is not None else (h1, h2)
        value = mmd.class_conditional_mmd(a, y, b, y, 3)
        grads = torch.autograd.grad(value, [h1, h2])
        return value, sum((gr * h).sum() for gr, h in zip(grads, (h1, h2))).item()  # <grad, h>: along the scale

    paper, radial_paper = match(None)
    free, radial_free = match(1.0)
    torch.testing.assert_close(free, paper)  # the same value
    assert radial_paper > 1e-3  # the paper's form: shrinking every feature lowers the loss
    assert abs(radial_free) < 1e-5  # taken out: nothing to gain by shrinking
    assert match(0.5)[1] == pytest.approx(0.5 * radial_paper, rel=1e-3)
    assert match(0.0)[1] == pytest.approx(radial_paper, rel=1e-5)


def test_mean_sq_dist_is_the_off_diagonal_mean_of_the_pairwise_distances():
    z = torch.randn(9, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(mmd.mean_sq_dist(z), mmd.pairwise_sq_dists(z).sum() / (9 * 8))
