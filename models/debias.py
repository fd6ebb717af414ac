"""Closed-form debiasing of integral (soft-argmax) pose regression.

Gu, Yang, Yao, *Removing the Bias of Integral Pose Regression*, ICCV 2021, supplement Eq. 10.

Soft-argmax over a region Ω of a heatmap H with temperature β:

    H~(p) = exp(β·H(p)) / C,    C = Σ_{p∈Ω} exp(β·H(p)),    J_r = Σ_{p∈Ω} H~(p)·p.

Every background pixel (H ≈ 0) adds exp(0) = 1 to C, so J_r is pulled toward the geometric
centre c_Ω of Ω. Removing exactly that uniform share gives, per axis,

    J_o = (C·J_r - |Ω|·c_Ω) / (C - |Ω|),

which is algebraically the centroid of the excess mass exp(β·H(p)) - 1 over Ω. C itself is never
built (it overflows fp32 once β·H > 88, fp16 near 11); with t = |Ω|/C = exp(log|Ω| - logsumexp)
the same formula reads

    J_o = (J_r - t·c_Ω) / (1 - t) = c_Ω + (J_r - c_Ω) / (1 - t),     1 - t = -expm1(log|Ω| - log C).

The right-hand form is what is computed: offsets from c_Ω keep the large absolute coordinates out
of the amplified difference. log C is split as m + log S (m = max of β·H over Ω, S = Σ exp(β·H - m)
∈ [1, |Ω|]) and log t = log(|Ω|/S) - m, which keeps log t ~5x more accurate in fp32 than
subtracting a rounded logsumexp ≈ 8 from log|Ω|.

Guard: flat, all-zero or negative maps have C ≤ |Ω| (t ≥ 1) and 1/(1 - t) explodes (a flat map
at -0.3 gives ~1e4 px). Where 1 - t ≤ GUARD_EPS or the result is not finite, the raw J_r is
returned instead and `reliable` is False. The result is always clipped into Ω's bounding box.
`background` reports t clamped to [0, 1] (t > 1, i.e. a net-negative map, is reported as 1).

Conventions:
- heatmaps [N, K, H, W]; coordinates are (x = column, y = row) in heatmap index coordinates,
  pixel centres at 0..W-1 / 0..H-1, so the whole map's centre is ((W-1)/2, (H-1)/2).
- window=None: Ω is the whole map. window=k (odd): the kxk window around each channel's arg-max
  cell, or around `centers` ([N, K, 2] integer (x, y) cells), clipped at the map borders; |Ω| and
  c_Ω are those of the clipped window.
- Computed in float32 (float64 stays float64; fp16/bf16 are upcast first). Differentiable, free
  of data-dependent Python control flow, exportable to ONNX (opset ≥ 18).
"""

from typing import NamedTuple

import torch
from torch import Tensor

# 1 - t is the fraction of C that is excess (foreground) mass; the correction divides by it.
# In fp32, log t carries an absolute error δ ≈ 1e-7 (from the sum S), which the division turns
# into ~|J_o - c_Ω|·δ/(1 - t) px: with offsets of up to ~30 px, 1 - t = 1e-3 keeps that at
# ~3e-3 px (measured: 1.2e-3 px worst case at 1 - t = 2.7e-3), while at 1e-4 it would reach
# ~0.03 px. Below the threshold there is effectively no foreground (C ≈ |Ω|) and the correction
# would only amplify noise. A weak but genuine peak stays above it: β = 1, peak 1, sigma = 1 gives
# 1 - t ≈ 2.7e-3 on a 64x48 map, ≈ 2e-3 on 64x64; sigma = 2 on 64x48 gives ≈ 1e-2.
GUARD_EPS = 1e-3


class IntegralEstimate(NamedTuple):
    debiased: Tensor  # [N, K, 2] (x, y) J_o, clipped into Ω's bounding box; J_r where unreliable
    raw: Tensor  # [N, K, 2] (x, y) J_r, the plain soft-argmax over Ω
    background: Tensor  # [N, K] t = |Ω|/C, the share of C a flat background explains, in [0, 1]
    reliable: Tensor  # [N, K] bool, False where the guard fell back to J_r


def _validate(heatmaps: Tensor, beta: float, window: int | None, centers: Tensor | None) -> None:
    if heatmaps.dim() != 4:
        raise ValueError(f"heatmaps must be [N, K, H, W], got shape {tuple(heatmaps.shape)}")
    if not heatmaps.is_floating_point():
        raise ValueError(f"heatmaps must be floating point, got {heatmaps.dtype}")
    try:
        value = float(beta)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(beta, bool) or not 0 < value < float("inf"):
        raise ValueError(f"beta must be a finite positive number, got {beta!r}")
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0
    ):
        raise ValueError(f"window must be None or an odd int >= 1, got {window!r}")
    if centers is not None:
        if window is None:
            raise ValueError("centers needs a window: with window=None Ω is the whole map")
        if tuple(centers.shape) != (*heatmaps.shape[:2], 2):
            raise ValueError(
                f"centers must be [N, K, 2] = {(*heatmaps.shape[:2], 2)}, "
                f"got {tuple(centers.shape)}"
            )


def integral_estimate(
    heatmaps: Tensor,
    beta: float,
    window: int | None = None,
    centers: Tensor | None = None,
) -> IntegralEstimate:
    """Raw and debiased soft-argmax of each heatmap channel over Ω, with the guard's verdict."""
    _validate(heatmaps, beta, window, centers)
    # Half precision cannot hold exp(β·H) sums or coordinates to 0.01 px: upcast before anything.
    dtype = torch.float64 if heatmaps.dtype == torch.float64 else torch.float32
    maps = heatmaps.to(dtype)
    height, width = maps.shape[-2], maps.shape[-1]
    logits = maps * float(beta)
    xs = torch.arange(width, dtype=dtype, device=maps.device)  # [W]
    ys = torch.arange(height, dtype=dtype, device=maps.device)  # [H]

    if window is None:
        zero = torch.zeros_like(logits[..., 0, 0])  # [N, K]; keeps the batch dim symbolic
        x_lo, y_lo = zero, zero
        x_hi, y_hi = zero + (width - 1), zero + (height - 1)
        masked = logits
    else:
        radius = window // 2
        if centers is None:
            flat = maps.flatten(2).argmax(dim=-1)  # [N, K]; argmax is unaffected by β > 0
            cx = (flat % width).to(dtype)
            cy = torch.div(flat, width, rounding_mode="floor").to(dtype)
        else:
            # Round and clamp so a slightly off or out-of-map centre still gives a non-empty Ω.
            cells = centers.to(dtype).round()
            cx = cells[..., 0].clamp(0, width - 1)
            cy = cells[..., 1].clamp(0, height - 1)
        x_lo, x_hi = (cx - radius).clamp(min=0), (cx + radius).clamp(max=width - 1)
        y_lo, y_hi = (cy - radius).clamp(min=0), (cy + radius).clamp(max=height - 1)
        # Broadcast comparisons against coordinate grids: no loops, exportable.
        in_x = (xs >= x_lo[..., None]) & (xs <= x_hi[..., None])  # [N, K, W]
        in_y = (ys >= y_lo[..., None]) & (ys <= y_hi[..., None])  # [N, K, H]
        inside = in_y[..., :, None] & in_x[..., None, :]  # [N, K, H, W]
        # -inf outside Ω: exp gives exactly 0 there, torch.where routes a zero gradient to the
        # masked logits, and Ω always holds its centre cell, so logsumexp stays finite.
        masked = torch.where(inside, logits, torch.full_like(logits, float("-inf")))

    count = (x_hi - x_lo + 1) * (y_hi - y_lo + 1)  # |Ω|, [N, K]
    center_x, center_y = (x_lo + x_hi) / 2, (y_lo + y_hi) / 2  # c_Ω, [N, K]

    # log C = m + log S with S = Σ exp(β·H - m), m the max over Ω: never C itself. S is kept
    # separate because log C ≈ 8 can only be held to ~5e-7 in fp32, while log(|Ω|/S) - m gives
    # log t to ~1e-7, and 1/(1 - t) amplifies that error. m is detached: the result does not
    # depend on it mathematically, and its gradient would only add rounding noise.
    peak = masked.flatten(2).amax(dim=-1).detach()  # m, [N, K]; finite, Ω is never empty
    shifted = torch.exp(masked - peak[..., None, None])  # 0 outside Ω
    # Reduce through the marginals: S is then a sum of sums (H, then W terms) rather than one
    # H·W-term sum, which keeps S accurate also where the runtime sums sequentially
    # (onnxruntime's ReduceSum over a 64x48 map: 6e-6 relative error, 0.02 px after 1/(1 - t)).
    columns = shifted.sum(dim=-2)  # [N, K, W]
    rows = shifted.sum(dim=-1)  # [N, K, H]
    total = columns.sum(dim=-1)  # S ∈ [1, |Ω|]
    # J_r - c_Ω, with coordinates taken relative to c_Ω (see docstring).
    off_x = (columns * (xs - center_x[..., None])).sum(dim=-1) / total
    off_y = (rows * (ys - center_y[..., None])).sum(dim=-1) / total

    # log t > 0 means C < |Ω| (negative map): clamp so t ≤ 1 and nothing overflows; the guard
    # fires there anyway and the clamp keeps the discarded branch (and its gradient) finite.
    log_t = (torch.log(count / total) - peak).clamp(max=0.0)
    background = torch.exp(log_t)
    # expm1: accurate where t → 1, unlike 1 - exp(log_t). (ONNX has no Expm1, so the exported
    # graph computes 1 - exp; measured cost on the worst case tested: ~1e-4 px.)
    one_minus_t = -torch.expm1(log_t)
    conditioned = one_minus_t > GUARD_EPS
    # Safe denominator: the unselected branch of torch.where still gets differentiated.
    scale = 1.0 / torch.where(conditioned, one_minus_t, torch.ones_like(one_minus_t))

    center = torch.stack((center_x, center_y), dim=-1)  # [N, K, 2]
    offset = torch.stack((off_x, off_y), dim=-1)
    raw = center + offset
    corrected = center + offset * scale[..., None]
    reliable = conditioned & torch.isfinite(corrected).all(dim=-1)
    debiased = torch.where(reliable[..., None], corrected, raw)
    # Clip into Ω's bounding box (elementwise min/max: ONNX Clip only takes scalar bounds).
    lower = torch.stack((x_lo, y_lo), dim=-1)
    upper = torch.stack((x_hi, y_hi), dim=-1)
    debiased = torch.minimum(torch.maximum(debiased, lower), upper)
    # Last resort for non-finite input (NaN/inf heatmaps): never hand back NaN/inf coordinates.
    debiased = torch.where(torch.isfinite(debiased), debiased, center)
    return IntegralEstimate(debiased=debiased, raw=raw, background=background, reliable=reliable)


def soft_argmax_debiased(
    heatmaps: Tensor,
    beta: float,
    window: int | None = None,
    centers: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(debiased, raw) soft-argmax, each [N, K, 2] (x, y); see `integral_estimate`."""
    estimate = integral_estimate(heatmaps, beta, window, centers)
    return estimate.debiased, estimate.raw
