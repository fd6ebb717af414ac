"""The baseline people write by hand: FastAPI endpoints that decode, warp and call `session.run`
once per request (plain `def`s, as FastAPI's docs advise for blocking code, so they run in
FastAPI's thread pool), same models, same session settings as the service.

- `/pose`: the whole photo letterboxed into the pose model;
- `/pose-detect` (with --detector): the detector on the letterboxed photo, then the pose model on
  a crop of each person it finds above the threshold, all of them in one `session.run`.

    python -m dipr.benchmarks.naive --port 8001 --model models/onnx/movenet-thunder.onnx \\
        --detector models/onnx/movenet-multipose.onnx
"""

import argparse
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, File, UploadFile

from dipr.core import detector_contract
from dipr.core.detection import DEFAULT_MIN_PERSON_SCORE
from dipr.service.backend import OnnxBackend, TensorrtOptions

PADDING = 1.25


def fit(rgb: np.ndarray, size: tuple[int, int], box: np.ndarray | None = None) -> np.ndarray:
    """The 2×3 affine that maps `box` (x1, y1, x2, y2; the whole image when None), padded when
    given, centred and scaled to fit, onto an input of `size`."""
    width, height = size
    if box is None:
        box, padding = np.array([0, 0, rgb.shape[1], rgb.shape[0]], np.float64), 1.0
    else:
        padding = PADDING
    box_w, box_h = (box[2] - box[0]) * padding, (box[3] - box[1]) * padding
    scale = min(width / box_w, height / box_h)
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return np.array(
        [[scale, 0, width / 2 - centre_x * scale], [0, scale, height / 2 - centre_y * scale]]
    )


def decode(upload: UploadFile) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(upload.file.read(), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def create_naive_app(model: Path, provider: str = "cpu", detector: Path | None = None) -> FastAPI:
    # TensorRT, if asked for: an engine tuned for the one batch size this endpoint runs.
    backend = OnnxBackend(model, provider, tensorrt=TensorrtOptions(max_batch_size=1))
    size = backend.info.input_size
    app = FastAPI()

    def posed(rgb: np.ndarray, matrices: list[np.ndarray]) -> list[list[list[float]]]:
        crops = np.stack([cv2.warpAffine(rgb, m, size) for m in matrices])
        keypoints = backend.session.run(["keypoints"], {"image": crops})[0]
        results = []
        for points, matrix in zip(keypoints, matrices, strict=True):
            inverse = cv2.invertAffineTransform(matrix)
            results.append((points @ inverse[:, :2].T + inverse[:, 2]).tolist())
        return results

    @app.post("/pose")
    def pose(image: Annotated[UploadFile, File()]) -> dict[str, list[list[list[float]]]]:
        rgb = decode(image)
        return {"persons": posed(rgb, [fit(rgb, size)])}

    if detector is not None:
        finder = OnnxBackend(
            detector,
            provider,
            tensorrt=TensorrtOptions(max_batch_size=1),
            describe=detector_contract.describe,
        )
        finder_size = finder.info.input_size

        @app.post("/pose-detect")
        def pose_detect(image: Annotated[UploadFile, File()]) -> dict[str, list[list[list[float]]]]:
            rgb = decode(image)
            matrix = fit(rgb, finder_size)
            letterboxed = cv2.warpAffine(rgb, matrix, finder_size)
            boxes, scores = finder.session.run(
                [detector_contract.BOXES, detector_contract.BOX_SCORES],
                {"image": letterboxed[None]},
            )
            inverse = cv2.invertAffineTransform(matrix)
            found = [
                (box.reshape(2, 2) @ inverse[:, :2].T + inverse[:, 2]).ravel()
                for box, score in zip(boxes[0], scores[0], strict=True)
                if score >= DEFAULT_MIN_PERSON_SCORE
            ]
            if not found:
                return {"persons": []}
            return {"persons": posed(rgb, [fit(rgb, size, box) for box in found])}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--detector", type=Path, help="also serve /pose-detect")
    parser.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu")
    args = parser.parse_args()
    uvicorn.run(
        create_naive_app(args.model, args.provider, args.detector),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
