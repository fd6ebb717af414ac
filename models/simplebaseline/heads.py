"""The integral heads a SimpleBaseline can be read out with, shared by training and export.

All take the network's logit maps H [N, K, h, w] and a temperature β; the soft-argmax is the
expectation under softmax(β·H) over the whole map, in heatmap index coordinates (cell centres at
0..w−1, 0..h−1), as in `dipr.models.debias`.

- "paper": `integral_estimate(H, β)`, the closed form J_o = (C·J_r − |Ω|·c_Ω) / (C − |Ω|) with
  C = Σ exp(β·H), |Ω| = h·w, c_Ω = ((w−1)/2, (h−1)/2). It assumes the background logits sit
  near 0 (true of heatmap-trained maps and of networks trained with this head by `dipr train`).
- "mmpose": MMPose's `IntegralRegressionHead(debias=True)` (mmpose/models/heads/regression_heads/
  integral_regression_head.py), in its normalised coordinates u = j / w (its `linspace_x` is
  arange(w)/w):  C = Σ exp(H)  (no β, although the softmax uses β),
  u_o = C/(C − 1) · (u_r − 1/(2C)),  i.e. the paper's formula with |Ω| = 1 and c = 1/2. With
  h·w = 4096 cells, C is in the thousands and the factor ≈ 1: nearly a no-op. Computed here with
  1/C = exp(−logsumexp(H)), never C itself (it overflows fp32 once H > 88).
- "none": the raw soft-argmax J_r.

Score (all modes): the share of the softmax(β·H) mass within the 5×5 cells around the map's
arg-max: the probability the network's own distribution puts within ±2 cells (±8 input pixels)
of its mode. It is in [0, 1], unaffected by a constant shift of the logits (to which an IPR/DSNT
network is blind, so a score built on C would be arbitrary for them), high for a single sharp
peak and low for flat or multi-modal maps (occluded or ambiguous joints). IPR checkpoints carry
no confidence of their own (MMPose reports 1.0 for every joint). It is set to 0 where the chosen
correction was ill-conditioned and the raw estimate was used instead.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from dipr.models.debias import GUARD_EPS, integral_estimate
from dipr.models.simplebaseline.variants import DEBIAS_MODES, DebiasMode

SCORE_WINDOW = 5


class HeadOutputs(NamedTuple):
    keypoints: Tensor  # [N, K, 2] (x, y) heatmap index coordinates, per the mode
    raw: Tensor  # [N, K, 2] the plain soft-argmax
    scores: Tensor  # [N, K] in [0, 1]
    reliable: Tensor  # [N, K] bool, False where the correction fell back to `raw`


def mmpose_debias(logits: Tensor, raw: Tensor) -> tuple[Tensor, Tensor]:
    """MMPose's debias formula applied to the raw soft-argmax `raw` [N, K, 2] (index
    coordinates) of `logits` [N, K, h, w]. Returns (coordinates, reliable).

    Exactly MMPose's arithmetic, in its normalised units, wherever 1 − 1/C > GUARD_EPS; where C ≤ 1
    (logits ≲ −8 everywhere) its formula divides by ~0 or flips sign, and the raw estimate is kept.
    """
    height, width = logits.shape[-2:]
    logits = logits.float()
    inv_c = torch.exp(-torch.logsumexp(logits.flatten(2), dim=-1))  # 1/C, [N, K]
    size = torch.tensor([width, height], dtype=raw.dtype, device=raw.device)
    normalised = raw / size  # MMPose's u = j / w
    conditioned = (1 - inv_c) > GUARD_EPS
    denominator = torch.where(conditioned, 1 - inv_c, torch.ones_like(inv_c))
    corrected = (normalised - 0.5 * inv_c[..., None]) / denominator[..., None] * size
    reliable = conditioned & torch.isfinite(corrected).all(dim=-1)
    return torch.where(reliable[..., None], corrected, raw), reliable


def peak_mass(logits: Tensor, beta: float, window: int = SCORE_WINDOW) -> Tensor:
    """Softmax(β·H) mass within the window×window cells around each map's arg-max, [N, K]."""
    logits = logits.float()
    height, width = logits.shape[-2:]
    flat = logits.flatten(2)
    probabilities = torch.softmax(flat * float(beta), dim=-1).view_as(logits)
    peak = flat.argmax(dim=-1)  # [N, K]
    cx = (peak % width).to(logits.dtype)
    cy = torch.div(peak, width, rounding_mode="floor").to(logits.dtype)
    radius = window // 2
    xs = torch.arange(width, dtype=logits.dtype, device=logits.device)
    ys = torch.arange(height, dtype=logits.dtype, device=logits.device)
    in_x = ((xs - cx[..., None]).abs() <= radius).to(logits.dtype)  # [N, K, w]
    in_y = ((ys - cy[..., None]).abs() <= radius).to(logits.dtype)  # [N, K, h]
    # Separable: sum rows within the window, then the columns within it.
    columns = (probabilities * in_y[..., :, None]).sum(dim=-2)  # [N, K, w]
    return (columns * in_x).sum(dim=-1).clamp(0.0, 1.0)


def integral_head(logits: Tensor, beta: float, mode: DebiasMode) -> HeadOutputs:
    """Keypoints (heatmap index coordinates), raw soft-argmax and scores of `logits` per `mode`."""
    if mode not in DEBIAS_MODES:
        raise ValueError(f"unknown debias mode {mode!r}; known: {', '.join(DEBIAS_MODES)}")
    logits = logits.float()  # the head is fp32 even under an fp16 backbone
    estimate = integral_estimate(logits, beta)
    if mode == "paper":
        keypoints, reliable = estimate.debiased, estimate.reliable
    elif mode == "mmpose":
        keypoints, reliable = mmpose_debias(logits, estimate.raw)
    else:
        keypoints, reliable = estimate.raw, torch.ones_like(estimate.reliable)
    scores = peak_mass(logits, beta) * reliable.to(logits.dtype)
    return HeadOutputs(keypoints=keypoints, raw=estimate.raw, scores=scores, reliable=reliable)
