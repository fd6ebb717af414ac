"""SimpleBaseline: the ResNets, the network's shapes, the heads, coordinates and ONNX parity."""

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from dipr.core import pose_contract
from dipr.export.cli import DEFAULT_PARITY_IMAGES
from dipr.export.onnx_export import (
    ExportOptions,
    build_pose_model,
    export_onnx,
    load_parity_images,
    parity,
)
from dipr.models.debias import integral_estimate
from dipr.models.resnet import ResNet
from dipr.models.simplebaseline.heads import SCORE_WINDOW, integral_head, peak_mass
from dipr.models.simplebaseline.network import SimpleBaseline
from dipr.models.simplebaseline.pose import SimpleBaselinePose
from dipr.models.simplebaseline.variants import (
    MMPOSE_PRESETS,
    STANDARD_INPUT_SIZES,
    parse_input_size,
    parse_mmpose_config,
)
from tests.helpers.mmpose_layout import mmpose_state_dict, save_mmengine_checkpoint

# torchvision's resnetNN parameter counts minus its 1000-way classifier (fc).
PARAMETERS = {
    18: 11_689_512 - 513_000,
    34: 21_797_672 - 513_000,
    50: 25_557_032 - 2_049_000,
    101: 44_549_160 - 2_049_000,
    152: 60_192_808 - 2_049_000,
}


@pytest.mark.parametrize("depth", sorted(PARAMETERS))
def test_resnet_depths_have_the_published_size_and_stride_32(depth: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        resnet = ResNet(depth).eval()
        features = resnet(torch.zeros(1, 3, 96, 64))
    assert sum(p.numel() for p in resnet.parameters()) == PARAMETERS[depth]
    assert features.shape == (1, 512 if depth < 50 else 2048, 3, 2)


def test_bottleneck_strides_on_the_3x3_conv() -> None:
    """MMPose's ResNet style='pytorch' (its default): the stride sits on conv2, not conv1."""
    block = ResNet(50).layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


@pytest.mark.parametrize("size", STANDARD_INPUT_SIZES)
def test_heatmaps_are_a_quarter_of_the_input(size: tuple[int, int]) -> None:
    network = SimpleBaseline(18).eval()
    width, height = size
    with torch.no_grad():
        logits = network(torch.zeros(2, 3, height, width))
    assert logits.shape == (2, 17, height // 4, width // 4)
    deconvs = [m for m in network.head.deconv_layers if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.out_channels, d.kernel_size, d.stride) for d in deconvs] == [
        (256, (4, 4), (2, 2))
    ] * 3


def test_input_sizes_are_width_by_height_multiples_of_32() -> None:
    assert parse_input_size("192x256") == (192, 256)
    for bad in ("256", "100x128", "0x64", "axb"):
        with pytest.raises(ValueError):
            parse_input_size(bad)


def test_mmpose_config_text_gives_beta_debias_and_size() -> None:
    debias = parse_mmpose_config(
        "codec = dict(type='IntegralRegressionLabel', input_size=(256, 256))\n"
        "model = dict(backbone=dict(type='ResNet', depth=50),\n"
        "    head=dict(type='DSNTHead', in_channels=2048, debias=True, beta=10.))"
    )
    assert (debias.depth, debias.input_size, debias.beta, debias.debias, debias.head) == (
        50,
        (256, 256),
        10.0,
        "mmpose",
        "integral",
    )
    plain = parse_mmpose_config(
        "codec = dict(type='IntegralRegressionLabel', input_size=(256, 256))\n"
        "model = dict(backbone=dict(type='ResNet', depth=50), head=dict(type='DSNTHead'))"
    )
    assert (plain.beta, plain.debias) == (1.0, "none")  # DSNTHead's defaults
    assert MMPOSE_PRESETS["ipr_res50_debias"].beta == 10.0


# --- heads ---------------------------------------------------------------------------------


def mmpose_head_reference(feats: Tensor, beta: float, debias: bool) -> Tensor:
    """MMPose's IntegralRegressionHead.forward after the network (mmpose/models/heads/
    regression_heads/integral_regression_head.py), transcribed step by step in float64."""
    feats = feats.double()
    b, n, h, w = feats.shape
    linspace_x = torch.arange(0.0, 1.0 * w, 1, dtype=torch.float64).reshape(1, 1, 1, w) / w
    linspace_y = torch.arange(0.0, 1.0 * h, 1, dtype=torch.float64).reshape(1, 1, h, 1) / h
    heatmaps = torch.softmax((feats * beta).reshape(-1, n, h * w), dim=2).reshape(-1, n, h, w)
    pred_x = heatmaps.mul(linspace_x).reshape(b, n, -1).sum(dim=2, keepdim=True)
    pred_y = heatmaps.mul(linspace_y).reshape(b, n, -1).sum(dim=2, keepdim=True)
    if debias:
        c = feats.reshape(b, n, h * w).exp().sum(dim=2).reshape(b, n, 1)
        pred_x = c / (c - 1) * (pred_x - 1 / (2 * c))
        pred_y = c / (c - 1) * (pred_y - 1 / (2 * c))
    return torch.cat([pred_x, pred_y], dim=-1)  # normalised, [B, N, 2]


def peaked_logits(seed: int, background: float, shape: tuple[int, int] = (64, 48)) -> Tensor:
    """Gaussian bumps (height 1–3, σ 1.5–4 cells) on a constant background, plus noise."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    ys, xs = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    maps = torch.full((2, 17, h, w), background)
    for b in range(2):
        for k in range(17):
            cx, cy = torch.rand(2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
            sigma = 1.5 + 2.5 * torch.rand(1, generator=g)
            height = 1 + 2 * torch.rand(1, generator=g)
            maps[b, k] += height * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    return maps + 0.05 * torch.randn(maps.shape, generator=g)


@pytest.mark.parametrize(("background", "beta"), [(-4.0, 1.0), (-2.0, 10.0), (0.0, 1.0)])
def test_mmpose_mode_is_mmposes_formula(background: float, beta: float) -> None:
    logits = peaked_logits(0, background)
    h, w = logits.shape[-2:]
    size = torch.tensor([w, h], dtype=torch.float64)
    expected = mmpose_head_reference(logits, beta, debias=True)
    ours = integral_head(logits, beta, "mmpose")
    assert ours.reliable.all()
    # Index coordinates here, MMPose's normalised units there: u = j / w.
    assert torch.allclose(ours.keypoints.double() / size, expected, atol=2e-6)
    raw = mmpose_head_reference(logits, beta, debias=False)
    assert torch.allclose(ours.raw.double() / size, raw, atol=2e-6)
    assert torch.allclose(integral_head(logits, beta, "none").keypoints, ours.raw)


def test_mmpose_debias_is_nearly_a_no_op_where_the_papers_is_not() -> None:
    """On a map with a low background the paper's correction removes the pull to the centre;
    MMPose's (|Ω| = 1, no β in C) barely moves the raw estimate (REFERENCE §3)."""
    logits = peaked_logits(1, 0.0)
    raw = integral_head(logits, 1.0, "none").keypoints
    mmpose = integral_head(logits, 1.0, "mmpose").keypoints
    paper = integral_head(logits, 1.0, "paper").keypoints
    assert (mmpose - raw).abs().max() < 0.05  # cells
    assert (paper - raw).abs().mean() > 1.0


def test_paper_mode_is_the_closed_form_over_the_whole_map() -> None:
    logits = peaked_logits(2, 0.0)
    head = integral_head(logits, 5.0, "paper")
    estimate = integral_estimate(logits, 5.0)
    assert torch.equal(head.keypoints, estimate.debiased)
    assert torch.equal(head.reliable, estimate.reliable)


def test_score_is_the_mass_near_the_mode_and_blind_to_a_logit_shift() -> None:
    h, w = 64, 48
    sharp = torch.zeros(1, 1, h, w)
    sharp[0, 0, 20, 30] = 50.0
    flat = torch.zeros(1, 1, h, w)
    assert peak_mass(sharp, 1.0).item() == pytest.approx(1.0)
    # A flat map's arg-max is the first cell, where the window is clipped to 3x3.
    radius = SCORE_WINDOW // 2
    assert peak_mass(flat, 1.0).item() == pytest.approx((radius + 1) ** 2 / (h * w), rel=1e-5)
    shifted = torch.zeros(1, 1, h, w)
    shifted[0, 0, 30, 20] = 1e-3  # a barely raised cell: the window is whole, the map ~flat
    assert peak_mass(shifted, 1.0).item() == pytest.approx(SCORE_WINDOW**2 / (h * w), rel=1e-2)
    logits = peaked_logits(3, -1.0)
    assert torch.allclose(peak_mass(logits, 2.0), peak_mass(logits + 7.0, 2.0), atol=1e-6)
    scores = integral_head(logits, 2.0, "paper").scores
    assert ((scores >= 0) & (scores <= 1)).all()


# --- coordinates -------------------------------------------------------------------------------


class FixedLogits(nn.Module):
    """Stands in for the network: returns the given logits whatever the image."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(1, 3, 1, 1))
        self.logits = logits

    def forward(self, pixels: Tensor) -> Tensor:
        return self.logits.expand(pixels.shape[0], -1, -1, -1)


def one_hot_logits(cells: list[tuple[int, int]], shape: tuple[int, int] = (32, 24)) -> Tensor:
    logits = torch.zeros(1, len(cells), *shape)
    for k, (x, y) in enumerate(cells):
        logits[0, k, y, x] = 100.0
    return logits


def test_dipr_convention_maps_cells_to_the_centres_of_their_pixels() -> None:
    logits = one_hot_logits([(0, 0), (10, 5), (23, 31)])
    pose = SimpleBaselinePose(FixedLogits(logits), (96, 128), 1.0, "none", "dipr")  # type: ignore[arg-type]
    out = pose(torch.zeros(1, 128, 96, 3, dtype=torch.uint8))
    expected = torch.tensor([[1.5, 1.5], [41.5, 21.5], [93.5, 125.5]])
    assert torch.allclose(out.keypoints[0], expected, atol=1e-3)


def test_mmpose_convention_matches_mmposes_labels() -> None:
    """MMPose encodes a joint at crop pixel index p (continuous p + 0.5: its warp puts the box
    centre at input_size/2, edges at 0 and input_size) as (p + 0.5)/input_size, and its head's
    expectation over arange(w)/w puts a perfect peak at cell j = label·w. The export must give p
    back."""
    input_w, input_h = 96, 128
    w, h = input_w // 4, input_h // 4
    for p in [(11.5, 71.5), (-0.5, -0.5), (43.5, 11.5)]:
        label = ((p[0] + 0.5) / input_w, (p[1] + 0.5) / input_h)
        cell = (label[0] * w, label[1] * h)
        assert cell[0] == int(cell[0]) and cell[1] == int(cell[1])  # on a cell for this check
        logits = one_hot_logits([(int(cell[0]), int(cell[1]))])
        pose = SimpleBaselinePose(FixedLogits(logits), (input_w, input_h), 1.0, "none", "mmpose")  # type: ignore[arg-type]
        out = pose(torch.zeros(1, input_h, input_w, 3, dtype=torch.uint8))
        assert torch.allclose(out.keypoints[0, 0], torch.tensor(p), atol=1e-3)


# --- ONNX ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def res18_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MMPose-layout ResNet-18 integral checkpoint for a 96x128 input (24x32 maps)."""
    path = tmp_path_factory.mktemp("sb") / "ipr_res18.pth"
    save_mmengine_checkpoint(path, mmpose_state_dict(18, heatmap_size=(24, 32), logit_scale=0.3))
    return path


@pytest.mark.parametrize("debias", ["paper", "mmpose", "none"])
def test_every_debias_mode_exports_and_matches_pytorch(
    res18_checkpoint: Path, tmp_path: Path, debias: str
) -> None:
    options = ExportOptions(
        arch="simplebaseline-res18",
        checkpoint=res18_checkpoint,
        beta=2.0,
        debias=debias,  # type: ignore[arg-type]
    )
    pose, metadata = build_pose_model(options)
    assert metadata[pose_contract.DEBIAS] == ("false" if debias == "none" else "true")
    assert metadata[pose_contract.DEBIAS_MODE] == debias
    assert metadata[pose_contract.COORDINATES] == "mmpose"
    path = tmp_path / f"{debias}.onnx"
    export_onnx(pose, metadata, path)
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == list(pose_contract.REQUIRED_OUTPUTS)
    images = load_parity_images(DEFAULT_PARITY_IMAGES, (96, 128), 8)
    worst = parity(pose, path, images)
    print(f"{debias}: max |ORT - PyTorch| px by batch {worst}")
    assert set(worst) == {1, 3, 8} and max(worst.values()) <= 0.01
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    keypoints, scores, raw = session.run(None, {pose_contract.INPUT: images})
    with torch.no_grad():
        expected = pose(torch.from_numpy(images))
    assert scores.dtype == np.float32 and scores.shape == (8, 17)
    assert np.abs(scores - expected.scores.numpy()).max() < 1e-4
    assert ((scores >= 0) & (scores <= 1)).all()
    moved = float(np.abs(keypoints - raw).max())
    assert moved == 0.0 if debias == "none" else math.isfinite(moved)
    if debias == "paper":
        assert moved > 0.5  # the correction does something on these maps
