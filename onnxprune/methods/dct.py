"""Kernels in the frequency domain: the 2-D DCT, its bands, and a weight trained as coefficients.

A ``kh x kw`` kernel ``W`` has the coefficients ``C = Dh W Dw^T`` (``D`` the orthonormal
DCT-II matrix); ``W = Dh^T C Dw`` gives it back, exactly up to float error. Convolution kernels
are smooth, so most of their energy sits in the low frequencies (small ``i + j``, the *band*
of coefficient ``(i, j)``): pruning coefficients there costs less than pruning weights.

:class:`Coefficients` is a ``torch.nn.utils.parametrize`` parametrization: registered on a
shadow weight, the parameter that trains becomes ``C`` and the weight the graph reads is
``W = Dh^T (C * M) Dw``, so autograd gives the coefficients' gradients. The mask ``M`` acts
straight-through: the forward uses the masked coefficients, the gradient reaches all of them,
so a masked coefficient keeps training and can return (Dynamic Network Surgery). Without a
basis (a 1x1 kernel, a Gemm or MatMul weight) it masks the weight itself the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from onnxprune import dct_storage


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix of size ``n`` (:func:`onnxprune.dct_storage.dct_matrix`)."""
    return torch.from_numpy(dct_storage.dct_matrix(n)).to(dtype)


def to_coefficients(w: torch.Tensor) -> torch.Tensor:
    """The 2-D DCT of every kernel of ``w`` (its last two axes)."""
    dh, dw = (dct_matrix(n, w.dtype).to(w.device) for n in w.shape[-2:])
    return dh @ w @ dw.T


def to_weights(c: torch.Tensor) -> torch.Tensor:
    """The kernels whose 2-D DCT is ``c`` (the inverse of :func:`to_coefficients`)."""
    dh, dw = (dct_matrix(n, c.dtype).to(c.device) for n in c.shape[-2:])
    return dh.T @ c @ dw


def bands(kh: int, kw: int) -> torch.Tensor:
    """The band ``i + j`` of each coefficient of a ``kh x kw`` kernel (0: the mean)."""
    return torch.arange(kh)[:, None] + torch.arange(kw)[None, :]


def in_frequency(shape: torch.Size | tuple[int, ...]) -> bool:
    """Whether a weight of ``shape`` trains as DCT coefficients (a Conv kernel larger than 1x1)."""
    return len(shape) >= 3 and shape[-1] * shape[-2] > 1


class Coefficients(nn.Module):
    """The parametrization ``C -> W`` of one weight, with its straight-through mask (module doc).

    ``mask`` has the weight's shape and lives in the coefficient domain when the weight is
    :func:`in_frequency`, else in the weight's own.
    """

    def __init__(self, shape: torch.Size | tuple[int, ...]) -> None:
        super().__init__()
        self.frequency = in_frequency(shape)
        self.register_buffer("mask", torch.ones(shape))
        if self.frequency:
            self.register_buffer("dh", dct_matrix(shape[-2], torch.float32))
            self.register_buffer("dw", dct_matrix(shape[-1], torch.float32))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """The weight from the coefficients ``c``, masked straight-through."""
        masked = c + (c * self.mask - c).detach()
        return self.dh.T @ masked @ self.dw if self.frequency else masked

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """The coefficients of the weight ``w``."""
        return self.dh @ w @ self.dw.T if self.frequency else w
