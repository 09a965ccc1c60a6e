"""Gaussian-kernel MMD and its class-conditional form, as pure tensor functions.

The estimate is the paper's (Gretton et al. 2012, biased V-statistic, then the square root):

    MMD(S1, S2) = [ mean K(S1, S1) + mean K(S2, S2) - 2 mean K(S1, S2) ]^(1/2),
    K(x, y) = exp(-||x - y||^2 / sigma).

The bandwidth sigma is a statistic of the batch and is never back-propagated (the paper, Sec. 4.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from itra_tune.config import BANDWIDTHS, check_bandwidth

__all__ = ["BANDWIDTHS", "batch_bandwidth", "class_conditional_mmd", "gaussian_kernel", "kernel_bandwidth", "mmd",
           "pairwise_sq_dists"]
MULTISCALE_POWERS = (-2, -1, 0, 1, 2)  # kernels at s * 2**k, summed (multi-kernel MMD, Long et al. 2015)
_EPS = 1e-12  # below this MMD^2 is treated as exactly zero: sqrt has no finite slope at 0


def pairwise_sq_dists(z: Tensor) -> Tensor:
    """Squared Euclidean distances between all rows of ``z`` (N, D) -> (N, N), clamped at zero."""
    sq = z.pow(2).sum(1)  # (N,)
    return (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min_(0.0)


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


def pooled_kernel(h1: Tensor, h2: Tensor, scheme: str = "median", sigma: float | Tensor | None = None) -> Tensor:
    """The kernel matrix of the pooled batch [h1; h2], (m1 + m2, m1 + m2), in float32 or wider."""
    z = torch.cat([h1, h2])  # a float32 memory beside bfloat16 features promotes to float32
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z  # (m1 + m2, D)
    d2 = pairwise_sq_dists(z)
    return gaussian_kernel(d2, kernel_bandwidth(d2, scheme, sigma), scheme)


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
    m1 = h1.shape[0]
    k = pooled_kernel(h1, h2, bandwidth, sigma)
    mmd2 = k[:m1, :m1].mean() + k[m1:, m1:].mean() - 2.0 * k[:m1, m1:].mean()
    return _safe_sqrt(mmd2)


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

    One pooled kernel matrix and one same-class mask; per-class sums are gathered with ``index_add``,
    so the cost is O((m1 + m2)^2 D + K) with no Python loop over the K classes and no host sync.

    Args:
        h1, y1: features (m1, D) and integer labels (m1,) of the first mini-batch.
        h2, y2: features (m2, D) and labels (m2,) of the second mini-batch.
        num_classes: K.
        bandwidth, sigma: as in ``mmd``; sigma comes from the pooled batch (all classes).

    Returns:
        A scalar tensor; 0 when no class is present in both batches.
    """
    k = pooled_kernel(h1, h2, bandwidth, sigma)  # (n, n), n = m1 + m2
    n1 = torch.bincount(y1, minlength=num_classes).to(k.dtype)  # (K,)
    n2 = torch.bincount(y2, minlength=num_classes).to(k.dtype)
    present = (n1 > 0) & (n2 > 0)
    # With a_i = 1/n1[y_i] on S1 and -1/n2[y_i] on S2, the class-c MMD^2 is the quadratic form
    # sum_{i,j in c} a_i a_j K_ij: the three blocks of Eq. (3) with their 1/n^2 and -2/(n1 n2) weights.
    y = torch.cat([y1, y2])  # (n,)
    a = torch.cat([1.0 / n1[y1], -1.0 / n2[y2]])  # (n,)
    same = y[:, None] == y[None, :]  # (n, n)
    per_example = a * ((k * same) @ a)  # (n,)
    mmd2 = per_example.new_zeros(num_classes).index_add_(0, y, per_example)  # (K,)
    per_class = _safe_sqrt(torch.where(present, mmd2, torch.zeros_like(mmd2)))
    return per_class.sum() / present.sum().clamp_min(1)


def batch_bandwidth(h1: Tensor, h2: Tensor, scheme: str = "median") -> Tensor:
    """The bandwidth ``median`` or ``mean`` would take for this pooled batch (for ``multiscale``: its base
    scale, the median), detached: for callers that smooth it over steps."""
    z = torch.cat([h1, h2]).detach()
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    return kernel_bandwidth(pairwise_sq_dists(z), "mean" if scheme == "mean" else "median")


def _check_scheme(scheme: str, sigma: float | Tensor | None) -> None:
    check_bandwidth(scheme, 1.0 if isinstance(sigma, Tensor) else sigma, key="mmd")  # a ConfigError: ValueError
