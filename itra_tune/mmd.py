"""Gaussian-kernel MMD and its class-conditional form, as pure tensor functions.

The estimate is the paper's (Gretton et al. 2012, biased V-statistic, then the square root):

    MMD(S1, S2) = [ mean K(S1, S1) + mean K(S2, S2) - 2 mean K(S1, S2) ]^(1/2),
    K(x, y) = exp(-||x - y||^2 / sigma).

The bandwidth sigma is a statistic of the batch and is never back-propagated (the paper, Sec. 4.1). Then
shrinking every feature together lowers the MMD at each step, and a model whose features no normalization
holds can collapse; ``detach_scale`` takes the features' common scale out of the gradient (as if the
bandwidth were carried in the graph), so the estimate cannot gain by shrinking them (docs/results/collapse.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from itra_tune.config import BANDWIDTHS, check_bandwidth

__all__ = ["BANDWIDTHS", "batch_bandwidth", "class_conditional_mmd", "cross_sq_dists", "gaussian_kernel",
           "detach_scale", "kernel_bandwidth", "mean_sq_dist", "mmd", "pairwise_sq_dists", "pooled_kernel_blocks"]
MULTISCALE_POWERS = (-2, -1, 0, 1, 2)  # kernels at s * 2**k, summed (multi-kernel MMD, Long et al. 2015)
_EPS = 1e-12  # below this MMD^2 is treated as exactly zero: sqrt has no finite slope at 0


def pairwise_sq_dists(z: Tensor) -> Tensor:
    """Squared Euclidean distances between all rows of ``z`` (N, D) -> (N, N), clamped at zero."""
    return cross_sq_dists(z, z)


def off_diagonal(m: Tensor) -> Tensor:
    """The N*(N-1) off-diagonal entries of a square matrix, without a boolean mask."""
    n = m.shape[0]
    return m.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(-1)


def kernel_bandwidth(d2: Tensor, scheme: str = "median", sigma: float | Tensor | None = None) -> Tensor:
    """The kernel bandwidth for pooled squared distances ``d2`` (N, N), detached from the graph.

    Args:
        d2: pooled pairwise squared distances.
        scheme: ``median`` (the paper's; torch's lower median of the off-diagonal entries), ``mean``,
            ``fixed`` (``sigma`` itself) or ``multiscale`` (the base scale: ``sigma`` if given, else the median).
        sigma: the fixed bandwidth, in squared feature units (a number, or a scalar tensor kept by the caller,
            e.g. a moving average: it is used as it is, without a host sync).

    Returns:
        A scalar tensor, strictly positive.
    """
    _check_scheme(scheme, sigma)
    if sigma is not None and scheme in ("fixed", "multiscale"):
        if isinstance(sigma, Tensor):
            return sigma.detach().to(dtype=d2.dtype, device=d2.device)
        return torch.as_tensor(float(sigma), dtype=d2.dtype, device=d2.device)
    with torch.no_grad():
        n = d2.shape[0]
        if scheme == "mean":
            s = off_diagonal(d2).mean()
        else:  # d2 is symmetric: the upper triangle has the same (lower) median at half the size
            rows, cols = torch.triu_indices(n, n, 1, device=d2.device)
            s = d2[rows, cols].median()
        # All points equal: any bandwidth gives MMD = 0; 1.0 keeps the kernel finite.
        return torch.where(s > 0, s, torch.ones_like(s))


def gaussian_kernel(d2: Tensor, sigma: Tensor, scheme: str = "median") -> Tensor:
    """exp(-d2 / sigma), or its sum over the multiscale bandwidths sigma * 2**k."""
    if scheme != "multiscale":
        return torch.exp(-d2 / sigma)
    return sum(torch.exp(-d2 / (sigma * 2.0**k)) for k in MULTISCALE_POWERS)


def cross_sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of ``a`` (N, D) and of ``b`` (M, D) -> (N, M), clamped at 0."""
    return (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min_(0.0)


def pooled_kernel_blocks(h1: Tensor, h2: Tensor, scheme: str = "median",
                         sigma: float | Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The blocks K(S1, S1), K(S1, S2), K(S2, S2) of the pooled batch's kernel, in float32 or wider.

    The bandwidth is that of the whole pooled batch (its off-diagonal distances, as ``kernel_bandwidth``).
    When ``h2`` carries no gradient (S2 detached, or a memory), the S2 block is built without a graph: it still
    enters the value (and so the square root's slope) but costs no backward, which matters when S2 is a
    memory many times the size of S1.
    """
    z1 = h1.float() if h1.dtype in (torch.float16, torch.bfloat16) else h1  # (m1, D)
    z2 = (h2.float() if h2.dtype in (torch.float16, torch.bfloat16) else h2).to(z1.dtype)  # (m2, D)
    d11, d12 = pairwise_sq_dists(z1), cross_sq_dists(z1, z2)
    with torch.set_grad_enabled(torch.is_grad_enabled() and h2.requires_grad):
        d22 = pairwise_sq_dists(z2)
    s = _pooled_bandwidth(d11, d12, d22, scheme, sigma)
    with torch.set_grad_enabled(torch.is_grad_enabled() and h2.requires_grad):
        k22 = gaussian_kernel(d22, s, scheme)
    return gaussian_kernel(d11, s, scheme), gaussian_kernel(d12, s, scheme), k22


def _pooled_bandwidth(d11: Tensor, d12: Tensor, d22: Tensor, scheme: str, sigma: float | Tensor | None) -> Tensor:
    # The pooled matrix's upper triangle is the triangles of the two diagonal blocks and the whole S1-S2 block:
    # the same values, hence the same median or mean, as kernel_bandwidth of the assembled matrix.
    _check_scheme(scheme, sigma)
    if sigma is not None and scheme in ("fixed", "multiscale"):
        return kernel_bandwidth(d11, scheme, sigma)
    with torch.no_grad():
        i1 = torch.triu_indices(d11.shape[0], d11.shape[0], 1, device=d11.device)
        i2 = torch.triu_indices(d22.shape[0], d22.shape[0], 1, device=d22.device)
        values = torch.cat([d11[i1[0], i1[1]], d12.reshape(-1), d22[i2[0], i2[1]]])
        s = values.mean() if scheme == "mean" else values.median()
        return torch.where(s > 0, s, torch.ones_like(s))  # all points equal: any bandwidth gives MMD = 0


def _safe_sqrt(x: Tensor) -> Tensor:
    # sqrt with value 0 and gradient 0 where x <= _EPS (h1 == h2), instead of an infinite slope.
    positive = x > _EPS
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def mmd(h1: Tensor, h2: Tensor, bandwidth: str = "median", sigma: float | Tensor | None = None) -> Tensor:
    """The paper's MMD between two feature sets, Eq. (3): square root of the biased estimate.

    Args:
        h1: features of the first mini-batch, (m1, D).
        h2: features of the second mini-batch, (m2, D).
        bandwidth: one of ``BANDWIDTHS``; sigma comes from the pooled batch.
        sigma: bandwidth for ``fixed``, base scale for ``multiscale``.

    Returns:
        A scalar tensor; 0 with a finite (zero) gradient when h1 equals h2.
    """
    k11, k12, k22 = pooled_kernel_blocks(h1, h2, bandwidth, sigma)
    return _safe_sqrt(k11.mean() + k22.mean() - 2.0 * k12.mean())


def _class_counts(y: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Examples per class, (K,): ``bincount``'s figures with a shape fixed by K, so ``torch.compile`` traces it."""
    return torch.zeros(num_classes, dtype=dtype, device=y.device).index_add_(0, y, torch.ones_like(y, dtype=dtype))


def class_conditional_mmd(
    h1: Tensor,
    y1: Tensor,
    h2: Tensor,
    y2: Tensor,
    num_classes: int,
    bandwidth: str = "median",
    sigma: float | Tensor | None = None,
) -> Tensor:
    """ITRA-c matching loss, Eq. (5): the mean over classes present in both batches of per-class MMD.

    One pooled kernel (in its three blocks) and same-class masks; per-class sums are gathered with
    ``index_add``, so the cost is O((m1 + m2)^2 D + K) with no Python loop over the K classes and no host sync;
    without a gradient into S2 its block costs no backward.

    Args:
        h1, y1: features (m1, D) and integer labels (m1,) of the first mini-batch.
        h2, y2: features (m2, D) and labels (m2,) of the second mini-batch.
        num_classes: K.
        bandwidth, sigma: as in ``mmd``; sigma comes from the pooled batch (all classes).

    Returns:
        A scalar tensor; 0 when no class is present in both batches.
    """
    k11, k12, k22 = pooled_kernel_blocks(h1, h2, bandwidth, sigma)  # (m1, m1), (m1, m2), (m2, m2)
    n1 = _class_counts(y1, num_classes, k11.dtype)  # (K,)
    n2 = _class_counts(y2, num_classes, k11.dtype)
    present = (n1 > 0) & (n2 > 0)
    # With a_i = 1/n1[y_i] on S1 and -1/n2[y_i] on S2, the class-c MMD^2 is the quadratic form
    # sum_{i,j in c} a_i a_j K_ij over the pooled batch: the three blocks of Eq. (3) with their 1/n^2 and
    # -2/(n1 n2) weights, summed per class with index_add.
    a1, a2 = 1.0 / n1[y1], -1.0 / n2[y2]  # (m1,), (m2,)
    s11, s12, s22 = y1[:, None] == y1[None, :], y1[:, None] == y2[None, :], y2[:, None] == y2[None, :]
    k12s = k12 * s12  # (m1, m2)
    row1 = (k11 * s11) @ a1 + k12s @ a2  # (m1,): each S1 example against its class in S1 and S2
    # (m2,): each S2 example likewise; contiguous, so that when S1 equals S2 both products round alike and
    # the value is exactly 0
    row2 = k12s.T.contiguous() @ a1 + (k22 * s22) @ a2
    mmd2 = k11.new_zeros(num_classes).index_add(0, y1, a1 * row1).index_add(0, y2, a2 * row2)  # (K,)
    per_class = _safe_sqrt(torch.where(present, mmd2, torch.zeros_like(mmd2)))
    return per_class.sum() / present.sum().clamp_min(1)


def mean_sq_dist(z: Tensor) -> Tensor:
    """The mean squared distance between distinct rows of ``z`` (N, D), in O(N D) and in the graph.

    Over the N(N-1) ordered pairs, mean ||z_i - z_j||^2 = 2N / (N - 1) * (mean ||z_i||^2 - ||mean z||^2): the
    off-diagonal mean of ``pairwise_sq_dists(z)``, which the ``mean`` bandwidth takes, without the N x N matrix.
    """
    n = z.shape[0]
    centred = z - z.mean(0, keepdim=True)  # centring first keeps the difference of two large numbers out
    return centred.pow(2).sum(1).mean() * (2.0 * n / max(n - 1, 1))


def detach_scale(h1: Tensor, h2: Tensor, weight: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
    """Both feature sets with their common scale taken out of the gradient, by ``weight``; values unchanged.

    With ``s`` the pooled root-mean-square distance (``mean_sq_dist``), each set becomes ``h * (sg(s) / s)^w``
    (sg: detached): the same numbers, but an MMD of them no longer gains by shrinking every feature together.
    At ``w = 1`` the MMD's gradient has no component along the features themselves (Euler: a function of
    ``h / s`` satisfies f(c h) = f(h), so <grad f, h> = 0), as if the bandwidth were carried in the graph; at
    ``w = 0`` it is the paper's. ``h2`` without gradient (a memory, a detached S2) enters ``s`` as a constant.

    Args:
        h1, h2: features (m1, D), (m2, D).
        weight: w in [0, 1], a number or a scalar tensor (no host sync).
    """
    z1 = h1.float() if h1.dtype in (torch.float16, torch.bfloat16) else h1  # (m1, D)
    z2 = (h2.float() if h2.dtype in (torch.float16, torch.bfloat16) else h2).to(z1.dtype)  # (m2, D)
    msd = mean_sq_dist(torch.cat([z1, z2]))
    s = torch.where(msd > _EPS, msd, torch.ones_like(msd)).sqrt()  # all points equal: MMD is 0 at any scale
    factor = (s.detach() / s) ** weight
    return z1 * factor, z2 * factor


def batch_bandwidth(h1: Tensor, h2: Tensor, scheme: str = "median") -> Tensor:
    """The bandwidth ``median`` or ``mean`` would take for this pooled batch (for ``multiscale``: its base
    scale, the median), detached: for callers that smooth it over steps."""
    z = torch.cat([h1, h2]).detach()
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    return kernel_bandwidth(pairwise_sq_dists(z), "mean" if scheme == "mean" else "median")


def _check_scheme(scheme: str, sigma: float | Tensor | None) -> None:
    check_bandwidth(scheme, 1.0 if isinstance(sigma, Tensor) else sigma, key="mmd")  # a ConfigError: ValueError
