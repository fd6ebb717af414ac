"""The COCO person keypoints, which every network here predicts, in the order they are output,
and their skeleton."""

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# Limbs as pairs of 0-based indices into COCO_KEYPOINTS (COCO's own skeleton, which is 1-based).
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13),
    (13, 11),
    (16, 14),
    (14, 12),
    (11, 12),
    (5, 11),
    (6, 12),
    (5, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (1, 2),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
)


def flip_permutation(names: tuple[str, ...] = COCO_KEYPOINTS) -> tuple[int, ...]:
    """For each keypoint, the index of its mirror image (left_* ↔ right_*, others themselves)."""
    index = {name: i for i, name in enumerate(names)}
    swapped = []
    for name in names:
        if name.startswith("left_"):
            swapped.append(index["right_" + name.removeprefix("left_")])
        elif name.startswith("right_"):
            swapped.append(index["left_" + name.removeprefix("right_")])
        else:
            swapped.append(index[name])
    return tuple(swapped)
