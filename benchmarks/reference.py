"""Slow, obviously-correct references for the package's vectorized math: tests check against them and the
benchmarks time against them."""

from __future__ import annotations

import torch
from torch import Tensor

from itra_tune.mmd import kernel_bandwidth, mmd, pairwise_sq_dists


def class_conditional_mmd_loop(
    h1: Tensor,
    y1: Tensor,
    h2: Tensor,
    y2: Tensor,
    num_classes: int,
    bandwidth: str = "median",
    sigma: float | None = None,
) -> Tensor:
    """Reference for ``class_conditional_mmd``: a Python loop of ``mmd`` calls over the classes.

    Slow by design; it exists to check and to benchmark the vectorized form.
    """
    z = torch.cat([h1, h2])
    s = float(kernel_bandwidth(pairwise_sq_dists(z), bandwidth, sigma))
    per_class_scheme = "multiscale" if bandwidth == "multiscale" else "fixed"
    values = [
        mmd(h1[y1 == c], h2[y2 == c], bandwidth=per_class_scheme, sigma=s)
        for c in range(num_classes)
        if (y1 == c).any() and (y2 == c).any()
    ]
    return torch.stack(values).mean() if values else z.new_zeros(())
