"""Tests for dipr.models.debias: the closed-form debiasing of soft-argmax (Gu et al., ICCV 2021).

Two kinds of ground truth are used, and the difference matters:

- The *exact target*: the closed form is algebraically the centroid of the excess mass
  exp(β·H(p)) - 1 over Ω. `_naive_reference` computes it from the definition
  (C = Σ exp(β·H) built directly in float64), so it is the right yardstick for any map.
- The *blob centre*: the continuous sub-pixel centre of a sampled Gaussian. The excess of a
  Gaussian of width sigma is sharpened to roughly sigma/√β; once that drops below ~0.6 px the
  grid cannot represent a sub-pixel position (aliasing), and the discrete centroid - the
  debiased result AND the raw soft-argmax alike - misses the centre by up to ~0.3 px at β=50,
  sigma=1. That is a sampling limit, not background bias, so the blob-centre tolerance of 0.01
  px is only asserted where sigma/√β is large enough (see SIGMA_FOR_BETA), while the exact
  target is asserted everywhere; `test_sharp_softmax_quantises_but_matches_exact_target` pins
  the limitation down.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dipr.models.debias import (
    GUARD_EPS,
    IntegralEstimate,
    integral_estimate,
    soft_argmax_debiased,
)

F64 = torch.float64


# --------------------------------------------------------------------------- helpers


def _blobs(pos: torch.Tensor, sigma: torch.Tensor, height: int, width: int, peak=1.0):
    """Gaussian blobs [M, 1, H, W] in float64; pos [M, 2] (x, y) in index coordinates."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=F64), torch.arange(width, dtype=F64), indexing="ij"
    )
    d2 = (xs - pos[:, 0, None, None]) ** 2 + (ys - pos[:, 1, None, None]) ** 2
    return (peak * torch.exp(-d2 / (2 * sigma[:, None, None] ** 2)))[:, None]


def _region(hm: np.ndarray, window, center=None):
    """(x_lo, x_hi, y_lo, y_hi) of Ω, computed independently of the implementation."""
    height, width = hm.shape
    if window is None:
        return 0, width - 1, 0, height - 1
    if center is None:
        cy, cx = np.unravel_index(int(np.argmax(hm)), hm.shape)
    else:
        cx, cy = int(center[0]), int(center[1])
    r = window // 2
    return max(cx - r, 0), min(cx + r, width - 1), max(cy - r, 0), min(cy + r, height - 1)


def _naive_reference(heatmaps: torch.Tensor, beta: float, window=None, centers=None):
    """The paper's formula from the definition, float64, loops: (debiased, raw, t) as numpy."""
    hms = heatmaps.detach().to(F64).numpy()
    n, k = hms.shape[:2]
    debiased, raw, background = np.zeros((n, k, 2)), np.zeros((n, k, 2)), np.zeros((n, k))
    for i in range(n):
        for j in range(k):
            center = None if centers is None else centers[i, j].tolist()
            x_lo, x_hi, y_lo, y_hi = _region(hms[i, j], window, center)
            c_big = 0.0
            sum_x = sum_y = 0.0
            for y in range(y_lo, y_hi + 1):
                for x in range(x_lo, x_hi + 1):
                    e = math.exp(beta * hms[i, j, y, x])
                    c_big += e
                    sum_x += e * x
                    sum_y += e * y
            area = (x_hi - x_lo + 1) * (y_hi - y_lo + 1)
            c_omega = np.array([(x_lo + x_hi) / 2, (y_lo + y_hi) / 2])
            j_r = np.array([sum_x, sum_y]) / c_big
            raw[i, j] = j_r
            debiased[i, j] = (c_big * j_r - area * c_omega) / (c_big - area)
            background[i, j] = area / c_big
    return debiased, raw, background


def _mean_err(est: torch.Tensor, truth: torch.Tensor) -> float:
    return (est.to(F64) - truth.to(F64)).norm(dim=-1).mean().item()


def _random_positions(gen, m, x_range, y_range):
    u = torch.rand(m, 2, generator=gen, dtype=F64)
    return torch.stack(
        (
            x_range[0] + u[:, 0] * (x_range[1] - x_range[0]),
            y_range[0] + u[:, 1] * (y_range[1] - y_range[0]),
        ),
        dim=-1,
    )


def _assert_inside(est: IntegralEstimate, bounds):
    x_lo, x_hi, y_lo, y_hi = bounds
    d = est.debiased
    assert torch.isfinite(d).all() and torch.isfinite(est.raw).all()
    assert torch.isfinite(est.background).all()
    assert (d[..., 0] >= x_lo).all() and (d[..., 0] <= x_hi).all()
    assert (d[..., 1] >= y_lo).all() and (d[..., 1] <= y_hi).all()


# --------------------------------------------------------------------------- 1. whole map

# Where the grid resolves the sharpened blob (sigma/√β ≳ 0.6 px), the debiased estimate must hit
# the blob centre. sigma in [1, 3] is used wherever that holds; at β=10 sigma < 2 and at β=50 any
# sigma <= 3 alias (measured: β=10 sigma=1 0.12 px, β=50 sigma=3 0.06 px, sigma=1 0.34 px, identical
# for raw and debiased), so those β use the smallest sigma range that the grid can resolve.
SIGMA_FOR_BETA = {1.0: (1.0, 3.0), 10.0: (2.0, 3.0), 50.0: (4.5, 5.5)}


@pytest.mark.parametrize("shape", [(48, 64), (64, 64)], ids=["64x48", "64x64"])
@pytest.mark.parametrize("beta", sorted(SIGMA_FOR_BETA))
def test_whole_map_blobs_recover_subpixel_centre(beta, shape):
    height, width = shape
    gen = torch.Generator().manual_seed(int(beta) * 1000 + height)
    m = 64
    # 16 px from every border: the truncated tail of exp(β·g) - 1 is below 1e-6 of the mass.
    pos = _random_positions(gen, m, (16, width - 17), (16, height - 17))
    lo, hi = SIGMA_FOR_BETA[beta]
    sigma = lo + (hi - lo) * torch.rand(m, generator=gen, dtype=F64)
    maps = _blobs(pos, sigma, height, width).float()
    est = integral_estimate(maps, beta)
    truth = pos[:, None]

    assert est.debiased.dtype == torch.float32 and est.debiased.shape == (m, 1, 2)
    assert est.reliable.all()
    err_debiased = _mean_err(est.debiased, truth)
    err_raw = _mean_err(est.raw, truth)
    print(f"beta={beta} {width}x{height}: raw {err_raw:.4f} px, debiased {err_debiased:.5f} px")
    assert err_debiased <= 0.01

    center = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=F64)
    if beta <= 10:
        # The bias is real and large: at least 10x the debiased error and >= 0.1 px ...
        assert err_raw >= 0.1 and err_raw >= 10 * err_debiased
        # ... and it points at the map centre: J_r - J_o = t·(c_Ω - J_o) exactly.
        far = (truth[:, 0] - center).norm(dim=-1) > 4
        bias = est.raw.to(F64)[:, 0] - truth[:, 0]
        toward = center - truth[:, 0]
        cos = (bias * toward).sum(-1) / (bias.norm(dim=-1) * toward.norm(dim=-1))
        assert far.sum() > 20 and (cos[far] > 0.99).all()
    else:
        # β=50: t = |Ω|/C ~ 1e-19, nothing left to correct; raw and debiased coincide.
        assert (est.background < 1e-10).all()
        assert err_raw <= 0.01


@pytest.mark.parametrize("beta", [1.0, 10.0, 50.0])
def test_sharp_softmax_quantises_but_matches_exact_target(beta):
    # sigma in [1, 3] at every β: the exact target (centroid of the excess, fp64 naive formula) is
    # always met, whereas the blob centre is missed at large β by the sampling effect described in
    # the module docstring - identically by raw and debiased.
    height, width = 48, 64
    gen = torch.Generator().manual_seed(7 + int(beta))
    m = 24
    pos = _random_positions(gen, m, (16, width - 17), (16, height - 17))
    sigma = 1 + 2 * torch.rand(m, generator=gen, dtype=F64)
    maps = _blobs(pos, sigma, height, width).float()
    est = integral_estimate(maps, beta)
    ref, ref_raw, _ = _naive_reference(maps, beta)
    assert np.abs(est.debiased.double().numpy() - ref).max() < 2e-3
    assert np.abs(est.raw.double().numpy() - ref_raw).max() < 1e-4
    if beta == 50.0:
        s1 = _blobs(pos, torch.ones(m, dtype=F64), height, width).float()
        est1 = integral_estimate(s1, beta)
        aliased = _mean_err(est1.debiased, pos[:, None])
        assert aliased > 0.1  # the grid, not the background, limits sigma=1 at β=50
        assert abs(aliased - _mean_err(est1.raw, pos[:, None])) < 1e-3


# --------------------------------------------------------------------------- 2. windows, borders


def _border_positions(gen, m, height, width):
    """Blob centres 3..4 px from a border on each axis where chosen: edges and all corners."""
    d = 3 + torch.rand(m, 2, generator=gen, dtype=F64)
    side = torch.arange(m) % 9  # cycle through 4 corners, 4 edges, interior
    sx, sy = side % 3, side // 3  # 0 low, 1 high, 2 middle
    mid = 10 + torch.rand(m, 2, generator=gen, dtype=F64) * torch.tensor(
        [width - 21.0, height - 21.0], dtype=F64
    )
    px = torch.where(sx == 0, d[:, 0], torch.where(sx == 1, width - 1 - d[:, 0], mid[:, 0]))
    py = torch.where(sy == 0, d[:, 1], torch.where(sy == 1, height - 1 - d[:, 1], mid[:, 1]))
    return torch.stack((px, py), dim=-1)


@pytest.mark.parametrize("window", [7, 11])
@pytest.mark.parametrize(("beta", "sigma"), [(1.0, 1.0), (10.0, 2.0)])
def test_windows_near_borders_recover_centre(window, beta, sigma):
    # Truth is well defined: the blob sits >= 3 px inside the map, so the excess exp(β·g) - 1
    # lost beyond the map edge or the window edge is < 1e-3 of the mass (for β=1 the excess is
    # ≈ g, and sigma=1 keeps g < 1e-2 at the window edge; for β=10 the e^10 core dominates).
    # Measured: at most 0.005 px; a smaller sigma would alias (sigma=0.7: 0.0094 mean).
    height, width = 48, 64
    gen = torch.Generator().manual_seed(window * 10 + int(beta))
    m = 72
    pos = _border_positions(gen, m, height, width)
    maps = _blobs(pos, torch.full((m,), sigma, dtype=F64), height, width).float()
    est = integral_estimate(maps, beta, window=window)
    assert est.reliable.all()
    err = (est.debiased.double()[:, 0] - pos).norm(dim=-1)
    assert err.mean() <= 0.01 and err.max() <= 0.01
    if beta == 1.0:
        assert _mean_err(est.raw, pos[:, None]) > 0.2  # the window's own background still biases
    ref, _, _ = _naive_reference(maps, beta, window)
    assert np.abs(est.debiased.double().numpy() - ref).max() < 1e-4


@pytest.mark.parametrize("window", [7, 11])
def test_windows_match_naive_on_truncated_blobs(window):
    # Blobs cut by the map edge (centre within 0..2 px of it, even outside): no "true centre",
    # but the closed form must still equal the naive formula over the clipped window.
    height, width = 24, 32
    gen = torch.Generator().manual_seed(window)
    m = 27
    pos = _border_positions(gen, m, height, width)
    # push every blob 3 px further out: edge blobs end up 0..1 px from (or just past) the edge
    pos = pos - 3 * torch.sign(pos - torch.tensor([(width - 1) / 2, (height - 1) / 2]))
    sigma = 0.8 + 1.2 * torch.rand(m, generator=gen, dtype=F64)
    maps = _blobs(pos, sigma, height, width).float()
    for beta in (1.0, 10.0):
        est = integral_estimate(maps, beta, window=window)
        ref, ref_raw, ref_t = _naive_reference(maps, beta, window)
        assert np.abs(est.debiased.double().numpy() - ref).max() < 1e-4
        assert np.abs(est.raw.double().numpy() - ref_raw).max() < 1e-4
        assert np.allclose(est.background.double().numpy(), ref_t, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
    ("cell", "area", "c_omega"),
    [
        ((0, 0), 16, (1.5, 1.5)),  # top-left corner: columns 0..3, rows 0..3
        ((63, 47), 16, (61.5, 45.5)),  # bottom-right corner
        ((63, 0), 16, (61.5, 1.5)),  # top-right corner
        ((0, 20), 28, (1.5, 20.0)),  # left edge: 4 columns x 7 rows
        ((30, 20), 49, (30.0, 20.0)),  # interior: the full 7x7
    ],
)
def test_window_clipping_area_and_centre(cell, area, c_omega):
    # One bright cell on a zero map, window 7: C = (|Ω| - 1) + e^{β·a}, so t = |Ω|/C gives |Ω|
    # directly, and J_r = t·c_Ω + (1 - t)·cell gives c_Ω.
    beta, a = 3.0, 1.0
    maps = torch.zeros(1, 1, 48, 64, dtype=F64)
    maps[0, 0, cell[1], cell[0]] = a
    est = integral_estimate(maps, beta, window=7)
    big_c = area - 1 + math.exp(beta * a)
    assert est.background.item() == pytest.approx(area / big_c, rel=1e-12)
    t = est.background.item()
    c_est = (est.raw[0, 0].numpy() - (1 - t) * np.array(cell)) / t
    assert np.allclose(c_est, c_omega, atol=1e-9)
    assert np.allclose(est.debiased[0, 0].numpy(), cell, atol=1e-9)
    assert est.reliable.item()


def test_whole_map_centre_convention():
    # A map with one bright cell at (0, 0): c_Ω must be ((W-1)/2, (H-1)/2), not (W/2, H/2).
    maps = torch.zeros(1, 1, 48, 64, dtype=F64)
    maps[0, 0, 0, 0] = 1.0
    est = integral_estimate(maps, 5.0)
    t = est.background.item()
    assert t == pytest.approx(3072 / (3071 + math.exp(5.0)), rel=1e-12)
    assert np.allclose(est.raw[0, 0].numpy() / t, (31.5, 23.5), atol=1e-9)
    assert np.allclose(est.debiased[0, 0].numpy(), (0.0, 0.0), atol=1e-9)


def test_window_larger_than_map_is_whole_map():
    gen = torch.Generator().manual_seed(3)
    maps = torch.rand(2, 3, 12, 16, generator=gen)
    whole = integral_estimate(maps, 5.0)
    big = integral_estimate(maps, 5.0, window=101)
    for a, b in zip(whole, big, strict=True):
        assert torch.allclose(a.double(), b.double(), atol=1e-5)


# --------------------------------------------------------------------------- 3. naive agreement


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("beta", [2.0, 8.0, 20.0])
def test_agrees_with_naive_fp64_formula(beta, window):
    gen = torch.Generator().manual_seed(int(beta) + (window or 0))
    n, k, height, width = 3, 4, 12, 16
    pos = _random_positions(gen, n * k, (1, width - 2), (1, height - 2))
    sigma = 0.7 + 2 * torch.rand(n * k, generator=gen, dtype=F64)
    peaks = _blobs(pos, sigma, height, width).reshape(n, k, height, width)
    noise = 0.2 * torch.rand(n, k, height, width, generator=gen, dtype=F64)
    maps64 = peaks + noise
    maps = maps64.float()
    ref, ref_raw, ref_t = _naive_reference(maps, beta, window)
    assert (1 - ref_t).min() > 0.05  # well-conditioned: the naive form is trustworthy here
    est = integral_estimate(maps, beta, window=window)
    assert np.abs(est.debiased.double().numpy() - ref).max() < 1e-4
    assert np.abs(est.raw.double().numpy() - ref_raw).max() < 1e-4
    assert np.allclose(est.background.double().numpy(), ref_t, rtol=1e-5, atol=1e-12)
    # float64 in, float64 out, and then the agreement is at rounding level.
    est64 = integral_estimate(maps64, beta, window=window)
    ref64, _, _ = _naive_reference(maps64, beta, window)
    assert est64.debiased.dtype == F64
    assert np.abs(est64.debiased.numpy() - ref64).max() < 1e-9
    deb, raw = soft_argmax_debiased(maps, beta, window=window)
    assert torch.equal(deb, est.debiased) and torch.equal(raw, est.raw)


# --------------------------------------------------------------------------- 4. guard


def _whole_bounds(height, width):
    return 0, width - 1, 0, height - 1


@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize(
    ("name", "value", "reliable"),
    [
        ("zero", 0.0, False),
        ("const_neg", -0.3, False),
        ("const_pos", 0.7, True),
        ("huge_neg", -100.0, False),
    ],
)
def test_flat_maps(name, value, reliable, window):
    height, width = 48, 64
    maps = torch.full((2, 3, height, width), value)
    for beta in (1.0, 10.0):
        est = integral_estimate(maps, beta, window=window)
        _assert_inside(est, _whole_bounds(height, width))
        assert bool(est.reliable.all()) is reliable and bool(est.reliable.any()) is reliable
        # A flat map has no position: raw and debiased are Ω's centre (arg-max ties pick cell
        # (0, 0), so a 7-window sits in the corner). A positive constant is indistinguishable
        # from uniform foreground: the guard does not fire, and the answer is still c_Ω.
        c = (31.5, 23.5) if window is None else (1.5, 1.5)
        assert torch.allclose(est.debiased, torch.tensor(c), atol=1e-4)
        assert torch.allclose(est.raw, torch.tensor(c), atol=1e-4)


def test_random_negative_maps_fall_back_to_raw():
    gen = torch.Generator().manual_seed(11)
    height, width = 48, 64
    maps = -torch.rand(4, 5, height, width, generator=gen)
    for window in (None, 7, 11):
        for beta in (1.0, 10.0, 200.0):
            est = integral_estimate(maps, beta, window=window)
            _assert_inside(est, _whole_bounds(height, width))
            assert not est.reliable.any()
            assert torch.equal(est.debiased, est.raw)  # raw already lies inside Ω


def _cancelling_pair(height, width, beta, target_excess):
    """A positive and a negative blob whose excess Σ(e^{βH} - 1) equals target_excess."""
    pos = torch.tensor([[20.3, 20.6], [44.1, 25.4]], dtype=F64)
    g = _blobs(pos, torch.tensor([2.0, 3.0], dtype=F64), height, width)[:, 0]
    pos_excess = torch.expm1(beta * g[0]).sum()
    lo, hi = 0.0, 1.0
    for _ in range(200):  # bisection on the negative blob's depth
        mid = (lo + hi) / 2
        if (pos_excess + torch.expm1(-beta * mid * g[1]).sum()).item() > target_excess:
            lo = mid
        else:
            hi = mid
    return (g[0] - lo * g[1])[None, None]


def test_two_peaks_cancelling_trip_the_guard():
    # + and - blobs whose excess cancels: C ≈ |Ω|, t → 1, 1/(1 - t) would explode.
    height, width, beta = 48, 64, 1.0
    maps = _cancelling_pair(height, width, beta, 0.0)
    est = integral_estimate(maps.float(), beta)
    _assert_inside(est, _whole_bounds(height, width))
    assert not est.reliable.any()
    assert torch.equal(est.debiased, est.raw)
    # Just above the threshold (1 - t ≈ 2·eps) the exact J_o lies far outside the map; the
    # result is reliable by the guard's definition but clipped into Ω.
    maps = _cancelling_pair(height, width, beta, 2 * GUARD_EPS * height * width)
    ref, _, ref_t = _naive_reference(maps, beta)
    assert 1 - ref_t[0, 0] == pytest.approx(2 * GUARD_EPS, rel=0.05)
    assert ref[0, 0, 0] < -50  # far outside the map (measured: x ≈ -84 px)
    est = integral_estimate(maps.float(), beta)
    assert est.reliable.all()
    _assert_inside(est, _whole_bounds(height, width))


def test_very_flat_and_weak_maps_trip_the_guard():
    height, width = 48, 64
    gen = torch.Generator().manual_seed(5)
    tiny = 1e-6 * torch.rand(2, 2, height, width, generator=gen)
    est = integral_estimate(tiny, 1.0)
    _assert_inside(est, _whole_bounds(height, width))
    assert not est.reliable.any()
    # A genuine but very weak peak (0.05 at β=1): 1 - t ≈ 1e-4 < eps, so it is flagged ...
    pos = torch.tensor([[40.3, 30.7]], dtype=F64)
    weak = _blobs(pos, torch.ones(1, dtype=F64), height, width, peak=0.05).float()
    est = integral_estimate(weak, 1.0)
    assert (1 - est.background).item() < GUARD_EPS and not est.reliable.any()
    _assert_inside(est, _whole_bounds(height, width))
    # ... while peak 1 (1 - t ≈ 2.7e-3) is corrected to well within 0.01 px.
    strong = _blobs(pos, torch.ones(1, dtype=F64), height, width).float()
    est = integral_estimate(strong, 1.0)
    assert est.reliable.all() and _mean_err(est.debiased, pos[:, None]) < 0.01


def test_non_finite_input_never_returns_non_finite():
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0, 3, 3] = float("nan")
    maps[0, 1, 2, 2] = float("inf")
    for window in (None, 3):
        est = integral_estimate(maps, 1.0, window=window)
        assert torch.isfinite(est.debiased).all() and not est.reliable.any()


# --------------------------------------------------------------------------- 5. fp16, huge β


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(dtype):
    height, width, beta = 48, 64, 10.0
    gen = torch.Generator().manual_seed(13)
    m = 32
    pos = _random_positions(gen, m, (16, width - 17), (16, height - 17))
    sigma = 2 + torch.rand(m, generator=gen, dtype=F64)
    maps = _blobs(pos, sigma, height, width).to(dtype)
    est = integral_estimate(maps, beta)
    assert est.debiased.dtype == torch.float32 and est.raw.dtype == torch.float32
    # Upcast first: identical to feeding the same values in fp32.
    est32 = integral_estimate(maps.float(), beta)
    for a, b in zip(est, est32, strict=True):
        assert torch.equal(a, b)
    assert est.reliable.all()
    # fp16 keeps ~3 decimal digits of H: still well inside 0.01 px; bf16 only ~2, so only the
    # exact target (the naive formula on the same quantised values) is asserted for it.
    if dtype == torch.float16:
        assert _mean_err(est.debiased, pos[:, None]) <= 0.01
    ref, _, _ = _naive_reference(maps.float(), beta)
    assert np.abs(est.debiased.double().numpy() - ref).max() < 1e-4
    for window in (7, 11):
        assert torch.isfinite(integral_estimate(maps, beta, window=window).debiased).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [None, 7])
def test_huge_beta_does_not_overflow(dtype, window):
    # β·H = 200 > 88: exp overflows fp32 (and fp16 already near 11); log-space must not.
    height, width, beta = 48, 64, 200.0
    gen = torch.Generator().manual_seed(17)
    pos = _random_positions(gen, 8, (10, width - 11), (10, height - 11))
    maps = _blobs(pos, 2 + torch.rand(8, generator=gen, dtype=F64), height, width)
    maps = maps.reshape(2, 4, height, width).to(dtype)
    est = integral_estimate(maps, beta, window=window)
    _assert_inside(est, _whole_bounds(height, width))
    assert est.reliable.all() and (est.background < 1e-30).all()
    ref, _, _ = _naive_reference(maps.float(), beta, window)  # e^200 still fits in fp64
    assert np.abs(est.debiased.double().numpy() - ref).max() < 1e-4


# --------------------------------------------------------------------------- 6. gradients


@pytest.mark.parametrize("window", [None, 3])
def test_gradcheck(window):
    gen = torch.Generator().manual_seed(19)
    pos = torch.tensor([[2.3, 1.8], [3.6, 2.2]], dtype=F64)
    base = _blobs(pos, torch.tensor([1.0, 1.3], dtype=F64), 5, 6).reshape(1, 2, 5, 6)
    maps = (base + 0.1 * torch.rand(1, 2, 5, 6, generator=gen, dtype=F64)).requires_grad_()

    def fn(x):
        est = integral_estimate(x, 3.0, window=window)
        return est.debiased, est.raw, est.background

    assert integral_estimate(maps, 3.0, window=window).reliable.all()
    assert torch.autograd.gradcheck(fn, (maps,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize(("value", "beta"), [(0.0, 1.0), (-0.3, 1.0), (-100.0, 10.0), (1.0, 200.0)])
def test_gradients_finite_through_guard(value, beta, window):
    maps = torch.full((2, 2, 16, 20), value)
    maps[:, :, 5, 7] += 0.5 if beta == 200.0 else 0.0  # a reliable, overflow-prone case
    maps.requires_grad_()
    est = integral_estimate(maps, beta, window=window)
    loss = est.debiased.sum() + est.raw.sum() + est.background.sum()
    loss.backward()
    assert torch.isfinite(maps.grad).all()
    if not est.reliable.any():
        # The guard's branch is the raw estimate, and so is its gradient.
        g_guard = torch.autograd.grad(
            integral_estimate(maps, beta, window=window).debiased.sum(), maps
        )[0]
        g_raw = torch.autograd.grad(integral_estimate(maps, beta, window=window).raw.sum(), maps)[0]
        assert torch.allclose(g_guard, g_raw)


def test_gradients_of_training_style_loss():
    # As a loss head: fp32, blobs plus noise, window and whole map, loss on the debiased output.
    gen = torch.Generator().manual_seed(23)
    pos = _random_positions(gen, 6, (5, 26), (5, 18))
    maps = _blobs(pos, torch.full((6,), 1.5, dtype=F64), 24, 32).reshape(2, 3, 24, 32).float()
    maps = (maps + 0.05 * torch.randn(2, 3, 24, 32, generator=gen)).requires_grad_()
    for window in (None, 7):
        deb, _ = soft_argmax_debiased(maps, 10.0, window=window)
        loss = (deb - pos.reshape(2, 3, 2).float()).abs().mean()
        (grad,) = torch.autograd.grad(loss, maps)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# --------------------------------------------------------------------------- 7. centers


def test_centers_select_a_peak_other_than_the_argmax():
    height, width, beta = 48, 64, 10.0
    a, b = (12.3, 10.6), (44.2, 33.7)
    ga = _blobs(torch.tensor([a], dtype=F64), torch.tensor([2.0], dtype=F64), height, width)
    gb = _blobs(torch.tensor([b], dtype=F64), torch.tensor([2.0], dtype=F64), height, width)
    maps = (ga + 0.8 * gb).float()  # A is the arg-max
    est = integral_estimate(maps, beta, window=11)
    assert _mean_err(est.debiased, torch.tensor([[a]])) < 0.01
    for cell in ((44, 34), (45, 34)):  # B's cell, and one cell off it
        for dtype in (torch.float32, torch.int64):
            centers = torch.tensor([[cell]], dtype=dtype)
            est = integral_estimate(maps, beta, window=11, centers=centers)
            assert est.reliable.all()
            assert _mean_err(est.debiased, torch.tensor([[b]])) < 0.01
            ref, _, _ = _naive_reference(maps, beta, 11, centers)
            assert np.abs(est.debiased.double().numpy() - ref).max() < 1e-4
    # centres given at the arg-max reproduce the default exactly
    argmax_cell = torch.tensor([[[12.0, 11.0]]])
    assert torch.equal(
        integral_estimate(maps, beta, 11, argmax_cell).debiased,
        integral_estimate(maps, beta, 11).debiased,
    )
    # centres off the map are clamped onto it: a corner window, finite, inside
    est = integral_estimate(maps, beta, 7, torch.tensor([[[-5.0, 100.0]]]))
    _assert_inside(est, (0, 3, 44, 47))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("window", [0, -3, 4, 2.0, 7.0, True])
def test_invalid_window(window):
    with pytest.raises(ValueError, match="window"):
        integral_estimate(torch.zeros(1, 1, 8, 8), 1.0, window=window)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("inf"), float("nan")])
def test_invalid_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        integral_estimate(torch.zeros(1, 1, 8, 8), beta)


def test_invalid_shapes_and_centers():
    with pytest.raises(ValueError, match="heatmaps"):
        integral_estimate(torch.zeros(1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="centers"):
        integral_estimate(torch.zeros(1, 1, 8, 8), 1.0, centers=torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="centers"):
        integral_estimate(torch.zeros(1, 2, 8, 8), 1.0, window=3, centers=torch.zeros(1, 1, 2))


# --------------------------------------------------------------------------- 8. ONNX


class _Head(nn.Module):
    def __init__(self, beta: float, window):
        super().__init__()
        self.beta, self.window = beta, window

    def forward(self, x):
        return soft_argmax_debiased(x, self.beta, self.window)


@pytest.mark.parametrize(("window", "beta"), [(None, 1.0), (7, 10.0)])
def test_onnx_export_dynamic_batch(window, beta, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    height, width = 48, 64
    head = _Head(beta, window).eval()
    path = tmp_path / f"debias_{window}.onnx"
    gen = torch.Generator().manual_seed(29)
    example = torch.rand(2, 3, height, width, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (example,),
            str(path),
            dynamo=True,
            opset_version=18,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    pos = _random_positions(gen, 9, (4, width - 5), (4, height - 5))
    sigma = torch.full((9,), 1.5, dtype=F64)
    blobs = _blobs(pos, sigma, height, width).reshape(3, 3, height, width).float()
    for batch in (1, 3):
        x = blobs[:batch] + 0.05 * torch.rand(batch, 3, height, width, generator=gen)
        x[0, 0] = 0.0  # guard branch in the graph too
        got = session.run(None, {name: x.numpy()})
        want = head(x)
        assert len(got) == 2
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            assert np.abs(g - w.numpy()).max() < 1e-4
    if window is None:
        # The weakly conditioned case, β=1 and clean blobs on a zero background (1 - t ≈ 0.01):
        # 1/(1 - t) amplifies every rounding difference ~100x, and onnxruntime sums in a
        # different order than torch (a single 3072-term ReduceSum cost 0.02 px before the
        # marginal-sum reduction). Both runtimes must still hit the exact target.
        x = _blobs(pos, sigma, height, width).reshape(3, 3, height, width).float()
        ref, _, ref_t = _naive_reference(x, beta)
        assert (1 - ref_t).max() < 0.02
        got = session.run(None, {name: x.numpy()})[0]
        assert np.abs(got - ref).max() < 2e-3
        assert np.abs(head(x)[0].double().numpy() - ref).max() < 2e-3
