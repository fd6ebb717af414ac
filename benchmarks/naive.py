"""The baseline people write by hand: one FastAPI endpoint that decodes, warps and calls
`session.run` once per request (a plain `def`, as FastAPI's docs advise for blocking code, so it
runs in FastAPI's thread pool), same model, same session settings as the service.

    python -m dipr.benchmarks.naive --port 8001 --model models/onnx/movenet-thunder.onnx
"""

import argparse
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, File, UploadFile

from dipr.service.backend import OnnxBackend, TensorrtOptions


def create_naive_app(model: Path, provider: str = "cpu") -> FastAPI:
    # TensorRT, if asked for: an engine tuned for the one batch size this endpoint runs.
    backend = OnnxBackend(model, provider, tensorrt=TensorrtOptions(max_batch_size=1))
    width, height = backend.info.input_size
    app = FastAPI()

    @app.post("/pose")
    def pose(image: Annotated[UploadFile, File()]) -> dict[str, list[list[float]]]:
        bgr = cv2.imdecode(np.frombuffer(image.file.read(), np.uint8), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        scale = min(width / w, height / h)
        matrix = np.array(
            [[scale, 0, (width - w * scale) / 2], [0, scale, (height - h * scale) / 2]]
        )
        crop = cv2.warpAffine(rgb, matrix, (width, height))
        outputs = backend.session.run(["keypoints", "scores"], {"image": crop[None]})
        inverse = cv2.invertAffineTransform(matrix)
        points = outputs[0][0] @ inverse[:, :2].T + inverse[:, 2]
        return {"keypoints": points.tolist(), "scores": outputs[1].tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu")
    args = parser.parse_args()
    uvicorn.run(
        create_naive_app(args.model, args.provider),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
