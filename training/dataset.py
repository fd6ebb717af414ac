"""Top-down training crops from a COCO-format keypoint set, with the usual augmentation.

Each person of the set (`dipr.core.coco`: non-crowd, 17 keypoints, at least one labelled) is one
sample. Its crop is the service's own (`dipr.core.crops.crop_for_box`: box padded by 1.25,
widened to the input's aspect ratio, one affine warp, zero outside the image), so the network
trains on exactly what it is served; augmentation composes, around the crop's centre, a random
scale s (the region grows by s), a rotation and a horizontal mirror with the left/right keypoints
swapped.

Coordinates: COCO keypoints are continuous (pixel edges at integers) and become pixel indices
(`dipr.core.coco.from_coco`); the affine maps them to crop pixel indices, the network's target.
A keypoint is trained on when labelled (v > 0) and inside the crop.

Randomness is a pure function of (seed, epoch, sample), never of worker scheduling: runs are
reproducible and resume exactly. The sample order is a seeded permutation per epoch, read as an
endless stream of batches (`BatchStream`), so a run resumes from any step without replaying data.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dipr.core.coco import LabelledPerson, from_coco, load_keypoint_set
from dipr.core.crops import PADDING, Crop, crop_for_box, warp
from dipr.core.images import DecodedImage, decode, read_header
from dipr.core.keypoints import flip_permutation

FLIP = flip_permutation()
# Training reads its own files: any size the decoder takes.
MAX_PIXELS = 1 << 40


@dataclass(frozen=True)
class Augmentation:
    """SimpleBaseline's augmentation: scale ±30 %, rotation ±40° (60 % of samples), mirror."""

    scale: float = 0.3  # s ~ U(1 − scale, 1 + scale); s > 1 shows more context
    rotation: float = 40.0  # degrees, θ ~ U(−rotation, rotation)
    rotation_prob: float = 0.6
    flip_prob: float = 0.5

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(scale=0.0, rotation=0.0, rotation_prob=0.0, flip_prob=0.0)


def augmentation_matrix(
    input_size: tuple[int, int], scale: float, degrees: float, flip: bool
) -> np.ndarray:
    """3×3 affine on crop pixel indices: about the crop centre ((W−1)/2, (H−1)/2), zoom by
    1/scale and rotate by `degrees`, then mirror x → W−1−x (exact for pixel indices)."""
    width, height = input_size
    cx, cy = (width - 1) / 2, (height - 1) / 2
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
    rotate = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], dtype=np.float64)
    back = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], dtype=np.float64)
    matrix = back @ rotate @ to_origin
    if flip:
        mirror = np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
        matrix = mirror @ matrix
    return matrix


def make_sample(
    image: DecodedImage,
    person: LabelledPerson,
    input_size: tuple[int, int],
    rng: np.random.Generator | None,
    augmentation: Augmentation,
    padding: float = PADDING,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crop uint8 [H, W, 3], keypoints [K, 2] crop pixel indices, weights [K]) for one person;
    rng=None: no augmentation (the service's crop exactly)."""
    base = crop_for_box(person.box, input_size, padding)
    matrix = np.vstack([base.matrix, [0.0, 0.0, 1.0]])
    flipped = False
    if rng is not None:
        a = augmentation
        scale = float(rng.uniform(1 - a.scale, 1 + a.scale)) if a.scale > 0 else 1.0
        rotate = a.rotation > 0 and rng.random() < a.rotation_prob
        degrees = float(rng.uniform(-a.rotation, a.rotation)) if rotate else 0.0
        flipped = bool(rng.random() < a.flip_prob)
        matrix = augmentation_matrix(input_size, scale, degrees, flipped) @ matrix
    affine = matrix[:2]
    crop = warp(image, Crop.from_matrix(affine), input_size)
    points = from_coco(person.keypoints[:, :2])
    points = points @ affine[:, :2].T + affine[:, 2]
    labelled = person.keypoints[:, 2] > 0
    if flipped:
        points, labelled = points[list(FLIP)], labelled[list(FLIP)]
    width, height = input_size
    inside = (
        (points[:, 0] >= 0)
        & (points[:, 0] <= width - 1)
        & (points[:, 1] >= 0)
        & (points[:, 1] <= height - 1)
    )
    weights = (labelled & inside).astype(np.float32)
    return crop, points.astype(np.float32), weights


class CocoKeypoints(Dataset):
    """Samples keyed by (epoch, index); decoded images are cached (small sets fit in memory)."""

    def __init__(
        self,
        annotations: Path,
        images: Path,
        input_size: tuple[int, int],
        augmentation: Augmentation | None,
        seed: int = 0,
        cache_images: bool = True,
    ) -> None:
        keypoint_set = load_keypoint_set(annotations, images)
        self.persons = keypoint_set.persons
        self.paths = keypoint_set.image_paths
        self.input_size = input_size
        self.augmentation = augmentation
        self.seed = seed
        self.cache_images = cache_images
        self._cache: dict[int, DecodedImage] = {}

    def __len__(self) -> int:
        return len(self.persons)

    def _image(self, image_id: int) -> DecodedImage:
        if image_id in self._cache:
            return self._cache[image_id]
        data = self.paths[image_id].read_bytes()
        image = decode(data, read_header(data, None, MAX_PIXELS))
        if self.cache_images:
            self._cache[image_id] = image
        return image

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key
        person = self.persons[index]
        rng = (
            np.random.default_rng([self.seed, epoch, index])
            if self.augmentation is not None
            else None
        )
        crop, points, weights = make_sample(
            self._image(person.image_id),
            person,
            self.input_size,
            rng,
            self.augmentation or Augmentation.none(),
        )
        return {
            "image": torch.from_numpy(np.ascontiguousarray(crop)),
            "keypoints": torch.from_numpy(points),
            "weights": torch.from_numpy(weights),
        }


class BatchStream:
    """Batches of (epoch, index) keys from step `start` on: epoch e is a permutation of the
    samples seeded by (seed, e), the epochs are concatenated and cut into batches. Endless."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int = 0) -> None:
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 1 << 20]).permutation(self.size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start * self.batch_size
        epoch = position // self.size
        order = self._order(epoch)
        while True:
            batch = []
            while len(batch) < self.batch_size:
                if position // self.size != epoch:
                    epoch = position // self.size
                    order = self._order(epoch)
                batch.append((epoch, int(order[position % self.size])))
                position += 1
            yield batch
