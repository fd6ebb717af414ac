"""MMPose checkpoints: loading with clear key errors, `dipr export` of one, and serving it."""

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import onnx
import pytest
import torch

from dipr.cli import main as dipr
from dipr.core import pose_contract
from dipr.models.simplebaseline.mmpose_import import CheckpointError, load_mmpose_checkpoint
from dipr.models.simplebaseline.weights import load_simplebaseline, resolve_mmpose_config
from tests.helpers.mmpose_layout import (
    IPR_RES50_DEBIAS_CFG,
    mmpose_state_dict,
    save_mmengine_checkpoint,
)
from tests.helpers.serving import running_service

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
ASTRONAUT_BOX = [40.0, 20.0, 470.0, 512.0]


@pytest.fixture(scope="module")
def ipr_res50(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An `ipr_res50_debias` checkpoint as MMEngine writes it: ResNet-50, 64x64 maps, meta.cfg."""
    state = mmpose_state_dict(50, heatmap_size=(64, 64), logit_scale=0.2)
    path = tmp_path_factory.mktemp("mmpose") / "ipr_res50_debias.pth"
    save_mmengine_checkpoint(path, state, IPR_RES50_DEBIAS_CFG)
    return path, state


def test_mmpose_checkpoint_loads_with_its_config(ipr_res50) -> None:
    path, state = ipr_res50
    loaded = load_simplebaseline(50, path)
    ours = loaded.network.state_dict()
    for theirs, mine in [
        ("backbone.conv1.weight", "backbone.conv1.weight"),
        ("backbone.layer3.5.conv2.weight", "backbone.layer3.5.conv2.weight"),
        (
            "backbone.layer4.0.downsample.1.running_var",
            "backbone.layer4.0.downsample.1.running_var",
        ),
        ("head.simplebaseline_head.deconv_layers.3.weight", "head.deconv_layers.3.weight"),
        (
            "head.simplebaseline_head.deconv_layers.7.running_mean",
            "head.deconv_layers.7.running_mean",
        ),
        ("head.simplebaseline_head.final_layer.bias", "head.final_layer.bias"),
    ]:
        assert torch.equal(ours[mine], state[theirs]), theirs
    assert loaded.input_size == (256, 256)  # from the 64-cell linspaces
    assert (loaded.beta, loaded.trained_debias, loaded.coordinates) == (10.0, "mmpose", "mmpose")
    assert not loaded.network.training


def test_a_bare_state_dict_and_the_0x_heatmap_layout_load(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pth"
    torch.save(mmpose_state_dict(18, heatmap_size=(48, 64)), bare)
    assert load_mmpose_checkpoint(bare, 18).input_size == (192, 256)
    for prefix in ("head.", "keypoint_head."):  # MMPose 1.x HeatmapHead, 0.x keypoint_head
        path = tmp_path / f"{prefix}pth"
        save_mmengine_checkpoint(path, mmpose_state_dict(18, None, prefix))
        checkpoint = load_mmpose_checkpoint(path, 18)
        assert checkpoint.head == "heatmap" and checkpoint.input_size is None


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = mmpose_state_dict(18, heatmap_size=(24, 32))
    del state["head.simplebaseline_head.final_layer.bias"]
    state["head.simplebaseline_head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    save_mmengine_checkpoint(path, state)
    with pytest.raises(CheckpointError) as error:
        load_mmpose_checkpoint(path, 18)
    message = str(error.value)
    assert "missing keys: head.simplebaseline_head.final_layer.bias" in message
    assert "unexpected keys: head.simplebaseline_head.extra.weight" in message


def test_a_wrong_depth_or_shape_says_so(ipr_res50, tmp_path: Path) -> None:
    path, _ = ipr_res50
    with pytest.raises(
        CheckpointError, match=r"looks like ResNet-50: try --arch simplebaseline-res50"
    ):
        load_simplebaseline(101, path)
    state = mmpose_state_dict(18, heatmap_size=(24, 32))
    state["head.simplebaseline_head.final_layer.weight"] = torch.zeros(16, 256, 1, 1)
    bad = tmp_path / "k16.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"final_layer.weight has shape \(16, 256, 1, 1\)"):
        load_mmpose_checkpoint(bad, 18)


def test_linspaces_in_another_convention_are_refused(tmp_path: Path) -> None:
    state = mmpose_state_dict(18, heatmap_size=(24, 32))
    state["head.linspace_x"] = torch.arange(24.0).reshape(1, 1, 1, 24) / 23  # align_corners-like
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"linspace_x is not arange\(24\)/24"):
        load_mmpose_checkpoint(path, 18)


class NotATensor:
    pass


def test_pickled_objects_are_refused_by_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": mmpose_state_dict(18, (24, 32)), "meta": {"x": NotATensor()}}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_mmpose_checkpoint(path, 18)


def test_the_config_can_be_a_preset_or_a_file(tmp_path: Path) -> None:
    assert resolve_mmpose_config("ipr_res50_dsnt").beta == 1.0  # type: ignore[union-attr]
    config = tmp_path / "ipr_res50_debias-8xb64-210e_coco-256x256.py"
    config.write_text(IPR_RES50_DEBIAS_CFG)
    from_file = resolve_mmpose_config(str(config))
    assert from_file is not None and (from_file.beta, from_file.debias) == (10.0, "mmpose")
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_mmpose_config("ipr_res51")


def test_an_integral_checkpoint_without_its_beta_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "no_meta.pth"
    torch.save(mmpose_state_dict(18, heatmap_size=(24, 32)), path)
    export = ["export", "--arch", "simplebaseline-res18", "--checkpoint", str(path)]
    output = ["--skip-parity", "-o", str(tmp_path / "m.onnx")]
    code = dipr([*export, *output])
    assert code == 1
    assert "--mmpose-config" in capsys.readouterr().err
    code = dipr([*export, "--beta", "1", "--input-size", "96x96", *output])
    assert code == 1
    assert "was trained at 96x128" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ipr_res50_onnx(ipr_res50, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dipr export` of the MMPose checkpoint, served as trained (its own debias formula)."""
    path, _ = ipr_res50
    output = tmp_path_factory.mktemp("onnx") / "ipr_res50_debias.onnx"
    command = ["export", "--arch", "simplebaseline-res50", "--checkpoint", str(path)]
    command += ["--input-size", "256x256", "--debias", "mmpose", "-o", str(output)]
    assert dipr(command) == 0  # includes ORT vs PyTorch parity at batch 1, 3 and 8, ≤ 0.01 px
    return output


def test_exported_mmpose_checkpoint_follows_the_contract(ipr_res50_onnx: Path) -> None:
    model = onnx.load(str(ipr_res50_onnx))
    (image,) = model.graph.input
    assert image.name == pose_contract.INPUT
    assert [d.dim_value for d in image.type.tensor_type.shape.dim[1:]] == [256, 256, 3]
    assert [o.name for o in model.graph.output] == list(pose_contract.REQUIRED_OUTPUTS)
    meta = {p.key: p.value for p in model.metadata_props}
    assert set(pose_contract.METADATA_KEYS) <= meta.keys()
    assert set(pose_contract.OPTIONAL_METADATA_KEYS) <= meta.keys()
    assert meta[pose_contract.NAME] == "simplebaseline-res50"
    assert json.loads(meta[pose_contract.INPUT_SIZE]) == [256, 256]
    assert (meta[pose_contract.DEBIAS], meta[pose_contract.DEBIAS_MODE]) == ("true", "mmpose")
    trained = (meta[pose_contract.TRAINED_DEBIAS], meta[pose_contract.COORDINATES])
    assert trained == ("mmpose", "mmpose")
    assert float(meta[pose_contract.BETA]) == 10.0 and meta[pose_contract.REGION] == "global"


@pytest.fixture(scope="module")
def url(ipr_res50_onnx: Path) -> Iterator[str]:
    with running_service(model_path=ipr_res50_onnx, max_batch_size=4) as base:
        yield base


def test_the_service_serves_it_unchanged(url: str) -> None:
    ready = httpx.get(f"{url}/health/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    image = cv2.imencode(".png", cv2.imread(str(PHOTOS / "astronaut.jpg")))[1].tobytes()
    response = httpx.post(
        f"{url}/pose",
        params={"raw": "true"},
        data={"boxes": json.dumps([[ASTRONAUT_BOX]])},
        files=[("image", ("a.png", image, "image/png"))],
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "simplebaseline-res50"
    assert body["model"]["input_size"] == [256, 256]
    (person,) = body["results"][0]["persons"]
    assert len(person["keypoints"]) == 17
    assert [k["name"] for k in person["keypoints"]][:2] == ["nose", "left_eye"]
    for k in person["keypoints"]:
        assert 0 <= k["score"] <= 1 and {"x", "y", "x_raw", "y_raw"} <= k.keys()
        # Random weights: no anatomy to check, but the crop's inverse affine must bring every
        # keypoint back inside the padded box (1.25 ×, as the service crops it).
        assert -100 < k["x"] < 580 and -100 < k["y"] < 630
    model = httpx.get(f"{url}/v1/model", timeout=10).json()
    print(json.dumps({k: v for k, v in model.items() if k != "metadata"}))
