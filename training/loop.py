"""The training loop of `dipr train`: the paper's method, on the module that gets exported.

The loss is computed on the deployable module itself (`SimpleBaselinePose` with the "paper" head
and this project's coordinate convention, or `MoveNetPose` with its person-window head), so what
is trained is bit for bit what `dipr export` writes: uint8 crops in, debiased keypoints in input
pixels out. Loss: L1 between those keypoints and the targets, over labelled keypoints inside the
crop, in heatmap cells (input pixels / 4), averaged over coordinates.

Optimiser: Adam; learning rate with MMPose's schedule shape (linear warm-up from 0.001×, then ×0.1
at each milestone), computed from the step alone so that a resumed run continues it exactly.
"""

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cv2
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dipr.models.movenet.variants import STRIDE
from dipr.models.regions import Region
from dipr.models.registry import TrainingRequest, architecture
from dipr.models.train_checkpoint import (
    LAST,
    read_train_checkpoint,
    restore_train_checkpoint,
    write_train_checkpoint,
)
from dipr.training.dataset import Augmentation, BatchStream, CocoKeypoints

LOG = "log.jsonl"
WARMUP_START = 0.001  # MMPose's LinearLR start_factor
THROUGHPUT_SKIP = 3  # first steps left out of images/s (allocation, cudnn autotuning)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint; a resume keeps it)."""

    arch: str
    annotations: str
    images: str
    input_size: tuple[int, int]  # (width, height)
    steps: int
    beta: float
    region: Region = "global"  # MoveNet: "person", "window" or "global"; SimpleBaseline: "global"
    window: int | None = None
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 500
    milestones: tuple[int, ...] = ()  # steps at which the learning rate is multiplied by gamma
    gamma: float = 0.1
    seed: int = 0
    augmentation: Augmentation | None = field(default_factory=Augmentation)
    pretrained: str | None = None
    coordinates: str = "dipr"  # training targets use dipr.models.coordinates

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["input_size"] = tuple(values["input_size"])
        values["milestones"] = tuple(values.get("milestones", ()))
        if values.get("augmentation") is not None:
            values["augmentation"] = Augmentation(**values["augmentation"])
        return cls(**values)


@dataclass(frozen=True)
class RunOptions:
    """How to run (may change between a run and its resume)."""

    output: Path
    workers: int = 2
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: bool = False  # bfloat16 autocast on CUDA (the head stays fp32)
    checkpoint_every: int = 1000
    stop_at: int | None = None  # end this run after this step (checkpointed), resumable
    progress: bool = True


@dataclass
class TrainResult:
    step: int
    losses: list[tuple[int, float]]  # (step, loss) of this run
    images_per_second: float | None
    checkpoint: Path


def learning_rate(config: TrainConfig, step: int) -> float:
    warmup = 1.0
    if config.warmup_steps > 0 and step < config.warmup_steps:
        warmup = WARMUP_START + (1 - WARMUP_START) * step / config.warmup_steps
    decays = sum(step >= milestone for milestone in config.milestones)
    return config.lr * warmup * config.gamma**decays


def build_model(config: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """(the deployable pose module trained through, the network whose weights are saved)."""
    request = TrainingRequest(
        pretrained=Path(config.pretrained) if config.pretrained else None,
        input_size=config.input_size,
        beta=config.beta,
        region=config.region,
        window=config.window,
    )
    return architecture(config.arch).build_for_training(request)


def keypoint_loss(predicted: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean L1 over the weighted coordinates, in heatmap cells (input pixels / stride)."""
    error = (predicted - target).abs().sum(dim=-1) / STRIDE  # [N, K], x + y
    return (error * weights).sum() / (2 * weights.sum()).clamp(min=1.0)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    return torch.device(name)


def train(
    config: TrainConfig,
    options: RunOptions,
    resume: Path | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train (or resume) and checkpoint to `options.output/last.safetensors`. When resuming,
    the checkpoint's configuration is used, except for `config.steps`."""
    device = _device(options.device)
    start = 0
    checkpoint = None
    if resume is not None:
        checkpoint = read_train_checkpoint(resume)
        saved = TrainConfig.from_json(checkpoint.config)
        # The run keeps its definition; only its length (`config.steps`) may change.
        config = replace(saved, steps=config.steps)
    torch.manual_seed(config.seed)  # the network's initialisation
    pose, network = build_model(config)
    network.to(device)
    if device.type == "cuda":
        network.to(memory_format=torch.channels_last)  # NHWC input permuted is channels_last
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate(config, 0))
    if checkpoint is not None:
        start = restore_train_checkpoint(checkpoint, network, optimizer)
        log(f"resumed {resume} at step {start}")
    dataset = CocoKeypoints(
        Path(config.annotations),
        Path(config.images),
        config.input_size,
        config.augmentation,
        config.seed,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=BatchStream(len(dataset), config.batch_size, config.seed, start),  # type: ignore[arg-type]
        num_workers=options.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=options.workers > 0,
        worker_init_fn=_single_threaded,
    )
    end = config.steps if options.stop_at is None else min(config.steps, options.stop_at)
    output = options.output
    output.mkdir(parents=True, exist_ok=True)
    _truncate_log(output / LOG, start)
    (output / "config.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")
    bar = _progress(options.progress, start, config.steps)
    pose.train()
    losses: list[tuple[int, float]] = []
    timer_start: float | None = None
    timed_images = 0
    step = start
    batches = iter(loader)
    with open(output / LOG, "a", encoding="utf-8") as log_file:
        while step < end:
            batch = next(batches)
            if step - start == THROUGHPUT_SKIP:
                _synchronize(device)
                timer_start = time.perf_counter()
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = batch["image"].to(device, non_blocking=True)
            target = batch["keypoints"].to(device, non_blocking=True)
            weights = batch["weights"].to(device, non_blocking=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=options.amp):
                keypoints = pose(images).keypoints
            loss = keypoint_loss(keypoints.float(), target, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if timer_start is not None:
                timed_images += images.shape[0]
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at step {step}")
            losses.append((step, value))
            log_file.write(json.dumps({"step": step, "loss": value, "lr": lr}) + "\n")
            bar(step, value, lr)
            if step % options.checkpoint_every == 0 or step == end:
                write_train_checkpoint(output / LAST, network, optimizer, step, config.to_json())
    _synchronize(device)
    rate = None
    if timer_start is not None and timed_images:
        rate = timed_images / (time.perf_counter() - timer_start)
    bar(None, None, None)
    if rate is not None:
        log(f"throughput: {rate:.1f} images/s ({device.type}, batch {config.batch_size})")
    log(f"step {step}/{config.steps}: checkpoint {output / LAST}")
    return TrainResult(step, losses, rate, output / LAST)


def _single_threaded(_: int) -> None:
    """Data workers are processes already: threads inside them would only oversubscribe."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the step a run resumes from (logged after its last checkpoint)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(
    enabled: bool, start: int, total: int
) -> Callable[[int | None, float | None, float | None], None]:
    """A tqdm bar (the `train` extra) or, without tqdm, a line every 10 %; (None, …) closes."""
    if not enabled:
        return lambda *_: None
    try:
        from tqdm import tqdm
    except ImportError:
        every = max(1, total // 10)

        def line(step: int | None, loss: float | None, lr: float | None) -> None:
            if step is not None and (step % every == 0 or step == total):
                print(f"step {step}/{total} loss {loss:.4f} lr {lr:.2e}", flush=True)

        return line
    bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(step: int | None, loss: float | None, lr: float | None) -> None:
        if step is None:
            bar.close()
            return
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.1e}", refresh=False)
        bar.update(1)

    return update
