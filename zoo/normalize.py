"""Running normalisation of observations (or returns) with statistics that travel with the weights.

:class:`RunningNorm` keeps a running mean and variance as *persistent buffers*, so the statistics
are part of the module's ``state_dict``: checkpoints save them, and the collectors' weight store
(which publishes parameters and persistent buffers, :mod:`rollout.sync`) copies them to the worker
processes with every weight update. Workers only apply the statistics; the learner updates them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RunningNorm"]


class RunningNorm(nn.Module):
    """Standardise inputs with a running mean and variance: ``clip((x - mean) / sqrt(var + eps))``.

    The statistics are merged batch by batch with the parallel algorithm of Chan et al. (1979),
    "Updating formulae and a pairwise algorithm for computing sample variances", as in Stable
    Baselines3's ``RunningMeanStd``: for a batch of ``n`` rows with mean ``m_b`` and population
    variance ``v_b``, and ``delta = m_b - mean``, ``total = count + n``::

        mean  <- mean + delta * n / total
        var   <- (var * count + v_b * n + delta^2 * count * n / total) / total
        count <- total

    Before any update ``mean = 0``, ``var = 1`` and ``count = eps``, so the module is (nearly) the
    identity and the first batch replaces the initial values almost entirely.

    Who updates it: the learner, with :meth:`update` on each batch's valid rows (typically once per
    batch, before the losses on it); collectors never do. Workers receive the statistics with the
    weights. For a fragment, ``norm.update(batch.state.obs[:-1], learners.returns.valid_mask(batch))``
    counts every real observation once (row T is row 0 of the next fragment; sticky padding rows
    are left out).

    Parameters
    ----------
    shape : tuple of int
        Shape of one sample, the trailing dims of the inputs: ``(n_obs,)`` for flat observations,
        ``()`` for scalars (e.g. returns, with ``center=False``).
    center : bool
        Subtract the mean; when False the output is ``x / sqrt(var + eps)`` (the scale only, as for
        reward normalisation).
    clip : float
        The output is clipped to ``[-clip, clip]`` (> 0; ``float('inf')`` disables it).
    eps : float
        Added to the variance before the square root, and the initial ``count`` (> 0).

    Attributes
    ----------
    mean, var : Tensor, float64, ``shape``
        Running mean and population variance (persistent buffers).
    count : Tensor, float64, ()
        Number of rows merged so far, plus ``eps`` (persistent buffer).

    Examples
    --------
    >>> norm = RunningNorm((4,))
    >>> norm.update(torch.randn(16, 8, 4) * 3 + 1, mask=torch.rand(16, 8) < 0.5)
    >>> norm(torch.randn(16, 8, 4)).shape
    torch.Size([16, 8, 4])
    """

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, shape: tuple, *, center: bool = True, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        try:
            shape = tuple(int(d) for d in shape)
        except TypeError:
            raise ValueError(f"RunningNorm: `shape` must be a tuple of ints, got {shape!r}") from None
        if any(d < 0 for d in shape):
            raise ValueError(f"RunningNorm: `shape` must have non-negative sizes, got {shape}")
        if not clip > 0:
            raise ValueError(f"RunningNorm: `clip` must be > 0, got {clip}")
        if not eps > 0:
            raise ValueError(f"RunningNorm: `eps` must be > 0, got {eps}")
        self.shape, self.center, self.clip, self.eps = shape, bool(center), float(clip), float(eps)
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(self.eps, dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, center={self.center}, clip={self.clip}, eps={self.eps}"

    def _batch_dims(self, x: torch.Tensor, where: str) -> torch.Size:
        n = len(self.shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n :]) != self.shape:
            raise ValueError(
                f"RunningNorm.{where}: the input must have shape (..., {', '.join(map(str, self.shape))}) "
                f"(trailing dims {self.shape}), got {tuple(x.shape)}"
            )
        return x.shape[: x.dim() - n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised input.

        Parameters
        ----------
        x : Tensor, ``(..., *shape)``
            Any real or integer dtype; gradients flow through it.

        Returns
        -------
        Tensor, float32, ``(..., *shape)``
            ``clip((x - mean) / sqrt(var + eps), -clip, clip)`` (without ``- mean`` when
            ``center`` is False).
        """
        self._batch_dims(x, "forward")
        x = x.to(torch.float32)
        if self.center:
            x = x - self.mean.to(torch.float32)
        x = x / torch.sqrt(self.var + self.eps).to(torch.float32)
        return x.clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Merge the selected rows of ``x`` into the running statistics (in place).

        Parameters
        ----------
        x : Tensor, ``(..., *shape)``
            A batch of samples; every leading index is one row.
        mask : Tensor, bool, ``(...)``, optional
            The rows to count (``x.shape`` without the trailing ``shape``); rows where it is False
            are ignored. All rows when None. Without any selected row nothing changes.

        Raises
        ------
        ValueError
            When the trailing dims of ``x`` are not ``shape``, or ``mask`` is not a bool tensor
            of the leading dims.
        """
        batch = self._batch_dims(x, "update")
        rows = x.detach().to(device=self.mean.device, dtype=torch.float64).reshape(-1, *self.shape)
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != batch:
                found = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else repr(mask)
                raise ValueError(
                    f"RunningNorm.update: `mask` must be a bool tensor of shape {tuple(batch)} (the leading "
                    f"dims of x {tuple(x.shape)}), got {found}"
                )
            rows = rows[mask.to(self.mean.device).reshape(-1)]
        n = rows.shape[0]
        if n == 0:
            return
        batch_mean = rows.mean(0)
        batch_var = rows.var(0, correction=0)
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta * delta * (self.count * n / total)
        self.mean += delta * (n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)
