"""Draw estimated poses onto the image, for people who would rather look than read."""

import cv2
import numpy as np

from dipr.service.pipeline import ImagePoses

VISIBLE = 0.3  # MoveNet's usual visibility threshold on keypoint scores
BOX_COLOUR = (255, 200, 0)  # RGB
LIMB_COLOUR = (0, 255, 120)
JOINT_COLOUR = (255, 40, 40)


def drawable(coordinates: np.ndarray) -> np.ndarray:
    """Pixel coordinates as the C ints cv2 takes: far-off (or NaN) ones clipped off the canvas."""
    limit = 1 << 30
    return np.clip(np.nan_to_num(np.round(coordinates), nan=-limit), -limit, limit).astype(int)


def render_jpeg(
    poses: ImagePoses, skeleton: tuple[tuple[int, int], ...], quality: int = 90
) -> bytes:
    if poses.pixels is None:
        raise ValueError("rendering needs the decoded image (keep_pixels=True)")
    canvas = poses.pixels.copy()
    # Line widths follow the image size so drawings stay visible on large photos.
    thickness = max(1, round(max(poses.width, poses.height) / 300))
    for person in poses.persons:
        x1, y1, x2, y2 = drawable(np.array(person.box)).tolist()
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
        points = drawable(person.keypoints)
        visible = person.scores >= VISIBLE
        for a, b in skeleton:
            if visible[a] and visible[b]:
                cv2.line(
                    canvas, tuple(points[a]), tuple(points[b]), LIMB_COLOUR, thickness, cv2.LINE_AA
                )
        for point, seen in zip(points, visible, strict=True):
            if seen:
                cv2.circle(canvas, tuple(point), 2 * thickness, JOINT_COLOUR, -1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()
