"""One tolerance table per dtype and an ``assert_close`` that says how far off a result is."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """Allowed error: ``|a - b| <= atol + rtol * |b|`` element-wise."""

    rtol: float
    atol: float


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
    torch.float32: Tolerance(rtol=1e-5, atol=1e-6),
    torch.float16: Tolerance(rtol=1e-3, atol=1e-3),
    torch.bfloat16: Tolerance(rtol=1.6e-2, atol=1e-2),
}


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    name: str = "tensor",
) -> None:
    """Assert ``actual`` matches ``expected`` within the tolerance of ``dtype``.

    ``dtype`` defaults to ``actual.dtype``; ``rtol``/``atol`` override the table. The
    failure message reports the shapes, the maximum absolute error, the maximum
    relative error and where the worst element sits.
    """
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
        )
    tol = TOLERANCES.get(dtype or actual.dtype, TOLERANCES[torch.float32])
    rtol = tol.rtol if rtol is None else rtol
    atol = tol.atol if atol is None else atol
    a = actual.detach().to(torch.float64).cpu()
    b = expected.detach().to(torch.float64).cpu()
    if a.numel() == 0:
        return
    nan_mismatch = torch.isnan(a) != torch.isnan(b)
    if nan_mismatch.any():
        raise AssertionError(f"{name}: NaN pattern differs at {int(nan_mismatch.sum())} elements")
    a = torch.nan_to_num(a)
    b = torch.nan_to_num(b)
    diff = (a - b).abs()
    bad = diff > atol + rtol * b.abs()
    if bad.any():
        worst = int(diff.argmax())
        rel = diff / b.abs().clamp_min(1e-30)
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{a.numel()} elements out of tolerance "
            f"(rtol={rtol:g}, atol={atol:g}); max abs err {diff.max().item():.3e} at {idx} "
            f"(actual {a.flatten()[worst].item():.6g}, expected {b.flatten()[worst].item():.6g}); "
            f"max rel err {rel[bad].max().item():.3e}"
        )
