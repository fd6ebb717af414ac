"""`dipr train`: crops and augmentation, reproducible data order, safe checkpoints, a smoke run
that reduces the loss, exact resumption, MoveNet fine-tuning, and export of the result."""

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors import safe_open

from dipr.cli import main as dipr
from dipr.core import pose_contract
from dipr.core.coco import dev_data
from dipr.core.crops import crop_for_box, warp
from dipr.core.keypoints import COCO_KEYPOINTS
from dipr.export.onnx_export import ExportOptions, build_pose_model
from dipr.models.movenet.weights import load_movenet
from dipr.models.registry import architecture
from dipr.models.train_checkpoint import FORMAT, read_train_checkpoint
from dipr.training.dataset import (
    FLIP,
    Augmentation,
    BatchStream,
    CocoKeypoints,
    make_sample,
)

COCO_DEV = dev_data()
ANNOTATIONS = COCO_DEV / "test_coco.json"
pytestmark = pytest.mark.skipif(not ANNOTATIONS.is_file(), reason="needs ../shared/data/coco_dev")
SMALL = ["--arch", "simplebaseline-res18", "--input-size", "96x128", "--workers", "0"]


def losses(run: Path) -> list[float]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_flip_swaps_left_and_right() -> None:
    names = COCO_KEYPOINTS
    assert names[FLIP[names.index("left_eye")]] == "right_eye"
    assert names[FLIP[names.index("right_ankle")]] == "left_ankle"
    assert FLIP[names.index("nose")] == names.index("nose")
    assert sorted(FLIP) == list(range(17))


def test_an_unaugmented_sample_is_the_services_crop() -> None:
    dataset = CocoKeypoints(ANNOTATIONS, COCO_DEV, (192, 256), augmentation=None)
    person = dataset.persons[0]
    sample = dataset[(0, 0)]
    image = dataset._image(person.image_id)
    crop = crop_for_box(person.box, (192, 256))
    assert np.array_equal(sample["image"].numpy(), warp(image, crop, (192, 256)))
    # COCO keypoints are continuous (edges at integers): index = value − 0.5, then the affine.
    points = person.keypoints[:, :2] - 0.5
    expected = points @ crop.matrix[:, :2].T + crop.matrix[:, 2]
    labelled = person.keypoints[:, 2] > 0
    assert np.allclose(sample["keypoints"].numpy()[labelled], expected[labelled], atol=1e-4)
    # Back through the service's inverse affine: the annotation again.
    back = crop.to_image(sample["keypoints"].numpy().astype(np.float64)) + 0.5
    assert np.allclose(back[labelled], person.keypoints[labelled, :2], atol=1e-3)


def test_a_mirrored_sample_is_the_mirror_image_with_sides_swapped() -> None:
    dataset = CocoKeypoints(ANNOTATIONS, COCO_DEV, (192, 256), augmentation=None)
    person = dataset.persons[3]
    image = dataset._image(person.image_id)
    plain = make_sample(image, person, (192, 256), None, Augmentation.none())
    mirror_only = Augmentation(scale=0.0, rotation=0.0, rotation_prob=0.0, flip_prob=1.0)
    flipped = make_sample(image, person, (192, 256), np.random.default_rng(0), mirror_only)
    assert np.abs(flipped[0].astype(int) - plain[0][:, ::-1].astype(int)).max() <= 1
    expected = plain[1][list(FLIP)].copy()
    expected[:, 0] = 191 - expected[:, 0]  # x → W − 1 − x in pixel indices
    assert np.allclose(flipped[1], expected, atol=1e-3)
    assert np.array_equal(flipped[2], plain[2][list(FLIP)])


def test_augmentation_is_seeded_per_sample_and_epoch() -> None:
    dataset = CocoKeypoints(ANNOTATIONS, COCO_DEV, (96, 128), Augmentation(), seed=3)
    a, b, c = dataset[(2, 5)], dataset[(2, 5)], dataset[(3, 5)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["keypoints"], b["keypoints"])
    assert not torch.equal(a["image"], c["image"])


def test_the_batch_stream_resumes_at_any_step() -> None:
    def take(stream: BatchStream, count: int) -> list:
        batches = iter(stream)
        return [next(batches) for _ in range(count)]

    whole = take(BatchStream(13, 4, seed=1), 12)
    assert take(BatchStream(13, 4, seed=1, start=7), 5) == whole[7:]
    first_epoch = [key for batch in whole for key in batch][:13]
    assert sorted(i for _, i in first_epoch) == list(range(13))  # each sample once per epoch


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run of `make test`: ResNet-18, 96x128, batch 8, 40 steps, CPU, seed 0."""
    run = tmp_path_factory.mktemp("train") / "res18"
    command = ["train", "--data", str(ANNOTATIONS), "--output", str(run), *SMALL]
    command += ["--batch-size", "8", "--steps", "40", "--lr", "1e-3", "--seed", "0"]
    assert dipr([*command, "--no-progress", "--device", "cpu"]) == 0
    return run


def test_smoke_training_reduces_the_loss(smoke_run: Path) -> None:
    curve = losses(smoke_run)
    assert len(curve) == 40 and all(np.isfinite(curve))
    print("loss curve (L1, heatmap cells):", " ".join(f"{v:.2f}" for v in curve))
    first, last = np.mean(curve[:5]), np.mean(curve[-5:])
    print(f"mean of steps 1-5: {first:.3f}, of steps 36-40: {last:.3f}")
    assert last < 0.8 * first


def test_checkpoints_are_safetensors_with_everything_to_resume(smoke_run: Path) -> None:
    path = smoke_run / "last.safetensors"
    with safe_open(str(path), framework="pt") as handle:  # not a pickle: safetensors parses it
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert metadata["format"] == FORMAT and metadata["step"] == "40"
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg_sq") for k in keys)
    checkpoint = read_train_checkpoint(path)
    assert checkpoint.config["arch"] == "simplebaseline-res18"
    assert checkpoint.config["input_size"] == [96, 128]
    assert checkpoint.config["coordinates"] == "dipr"


def test_the_trained_checkpoint_exports_with_its_training_settings(
    smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "trained.onnx"
    checkpoint = smoke_run / "last.safetensors"
    command = ["export", "--arch", "simplebaseline-res18", "--checkpoint", str(checkpoint)]
    assert dipr([*command, "-o", str(output)]) == 0
    assert "parity ok" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert json.loads(meta[pose_contract.INPUT_SIZE]) == [96, 128]
    assert float(meta[pose_contract.BETA]) == 10.0
    assert meta[pose_contract.COORDINATES] == "dipr"
    heads = (meta[pose_contract.DEBIAS_MODE], meta[pose_contract.TRAINED_DEBIAS])
    assert heads == ("paper", "paper")
    code = dipr([*command, "--arch", "simplebaseline-res34", "-o", str(output), "--skip-parity"])
    assert code == 1
    assert "pass --arch simplebaseline-res18" in capsys.readouterr().err


def test_a_resumed_run_continues_exactly(tmp_path: Path) -> None:
    common = ["train", "--data", str(ANNOTATIONS), *SMALL, "--input-size", "64x64"]
    common += ["--batch-size", "4", "--steps", "8", "--no-progress", "--device", "cpu"]
    assert dipr([*common, "--output", str(tmp_path / "whole")]) == 0
    assert dipr([*common, "--output", str(tmp_path / "split"), "--stop-at", "4"]) == 0
    assert read_train_checkpoint(tmp_path / "split" / "last.safetensors").step == 4
    resume = ["train", "--output", str(tmp_path / "split"), "--resume", "--workers", "0"]
    assert dipr([*resume, "--no-progress", "--device", "cpu"]) == 0
    whole = read_train_checkpoint(tmp_path / "whole" / "last.safetensors")
    split = read_train_checkpoint(tmp_path / "split" / "last.safetensors")
    assert split.step == whole.step == 8
    for key, value in whole.model.items():
        assert torch.equal(value, split.model[key]), key
    for key, value in whole.optimizer_tensors.items():
        assert torch.equal(value, split.optimizer_tensors[key]), key
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")


def test_train_refuses_to_overwrite_or_resume_nothing(
    smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dipr(["train", "--data", str(ANNOTATIONS), "--output", str(smoke_run)]) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert dipr(["train", "--output", str(tmp_path / "empty"), "--resume"]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_train_neither_offers_nor_accepts_the_person_detector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """movenet-multipose is in the registry as a detector, not a pose model."""
    command = ["train", "--data", str(ANNOTATIONS), "--output", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        dipr([*command, "--arch", "movenet-multipose"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'movenet-multipose'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="movenet-multipose is a person detector"):
        architecture("movenet-multipose")  # what a run's saved configuration is built from


def test_movenet_fine_tuning_runs_with_the_same_loss(tmp_path: Path) -> None:
    """A few steps on MoveNet Lightning through its deployable head (7x7 person window, β=5).
    With 4 steps of 2 crops the loss is noise around its start (≈ 2 cells, already a trained
    network): what is asserted is that it stays finite, the weights move, and the result loads
    for export as a fine-tuned model."""
    run = tmp_path / "lightning"
    command = ["train", "--data", str(ANNOTATIONS), "--output", str(run), "--workers", "0"]
    command += ["--arch", "movenet-lightning", "--batch-size", "2", "--steps", "4"]
    assert dipr([*command, "--no-progress", "--device", "cpu"]) == 0
    curve = losses(run)
    print("MoveNet fine-tuning loss:", " ".join(f"{v:.3f}" for v in curve))
    assert len(curve) == 4 and all(np.isfinite(curve)) and max(curve) < 20
    tuned = load_movenet("lightning", run / "last.safetensors").state_dict()
    original = load_movenet("lightning").state_dict()
    assert any(not torch.equal(tuned[k], original[k]) for k in original)
    _, metadata = build_pose_model(
        ExportOptions(arch="movenet-lightning", checkpoint=run / "last.safetensors")
    )
    assert metadata[pose_contract.TRAINED_DEBIAS] == "paper"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="throughput is measured on a GPU")
def test_gpu_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A longer run on the GPU: ResNet-50, 192x256, batch 64, bf16 autocast. Its images/s is
    reported as a warning, so that `make test` shows it."""
    steps = int(os.environ.get("DIPR_TRAIN_BENCH_STEPS", "200"))
    command = ["train", "--data", str(ANNOTATIONS), "--output", str(tmp_path / "gpu")]
    command += ["--arch", "simplebaseline-res50", "--batch-size", "64", "--steps", str(steps)]
    command += ["--workers", str(min(8, os.cpu_count() or 1)), "--device", "cuda", "--amp"]
    assert dipr([*command, "--no-progress"]) == 0
    rate = re.search(r"throughput: ([0-9.]+) images/s", capsys.readouterr().out)
    assert rate is not None
    name = torch.cuda.get_device_name()
    warnings.warn(f"dipr train throughput on {name}: {rate.group(1)} images/s", stacklevel=1)
    assert all(np.isfinite(losses(tmp_path / "gpu")))
