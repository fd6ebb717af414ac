"""The service's configuration: one typed object, read once at start-up from DIPR_* variables."""

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dipr.core.crops import PADDING
from dipr.core.detection import DEFAULT_MIN_PERSON_SCORE
from dipr.models.registry import DEFAULT_DETECTOR_ONNX, DEFAULT_ONNX

MiB = 1024 * 1024
DECODE_MP_PER_S = 100.0  # one core's JPEG decoding, conservatively (the default budget's unit)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIPR_", frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    model_path: Path = Field(DEFAULT_ONNX, description="ONNX model following the dipr contract")
    provider: Literal["auto", "cuda", "tensorrt", "cpu"] = Field(
        "auto",
        description="auto: CUDA when onnxruntime can use it, else CPU (with a warning when "
        "onnxruntime-gpu finds no usable GPU); cuda: CUDA or not ready; tensorrt: TensorRT "
        "(CUDA for what it cannot run) or not ready; cpu: CPU only",
    )
    device_id: int = Field(0, ge=0, description="CUDA device")
    tensorrt_cache_dir: Path = Field(
        Path(tempfile.gettempdir()) / "dipr-tensorrt",
        description="where TensorRT keeps its engines and timing cache (built on first start, "
        "minutes; reused while model, GPU, TensorRT version and DIPR_MAX_BATCH_SIZE stay)",
    )
    cuda_graphs: bool = Field(
        False,
        description="CUDA provider: run each warmed batch size as a CUDA graph (a session per "
        "size, inputs and outputs at fixed GPU addresses: less CPU per batch); every node of the "
        "model must run on CUDA, else the replica stays unready saying why (see make gpu-check)",
    )
    pinned_buffers: bool = Field(
        True,
        description="CUDA/TensorRT: stage each batch in page-locked host memory from ONNX "
        "Runtime's CUDA provider before its copy to the GPU (where it offers none: pageable "
        "memory, with a warning); off: always pageable",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="ORT threads per inference (0: on CPU ORT's choice, all cores; on a GPU "
        "one thread that does not spin)",
    )
    max_batch_size: int = Field(16, ge=1, description="most crops in one inference")
    batch_delay_ms: float = Field(
        0.0,
        ge=0,
        description="how long a batch may wait to fill; "
        "0 takes what queued while the last batch ran (best on CPU)",
    )
    inference_workers: int = Field(
        0,
        ge=0,
        description="threads running batches at once; 0: 2 on CPU, 1 on GPU. On CPU a batch "
        "that runs alone uses every core; batches that run together use a share each "
        "(batches of at most DIPR_MAX_BATCH_SIZE / 4), which keeps all cores busy",
    )
    frontend_processes: int = Field(
        0,
        ge=0,
        description="processes that serve HTTP, decode and crop, handing their crops through "
        "shared memory to one inference process that holds the models and batches the crops of "
        "all of them; 0: one process does everything (the CPU default). For a GPU: as many as "
        "the host has cores, so that one copy of the models gets full batches. Shared memory "
        "(/dev/shm) holds each process's share of DIPR_MAX_QUEUE and DIPR_DETECTOR_MAX_QUEUE, "
        "at least DIPR_MAX_BOXES crops (defaults: 60 MiB for up to 4, 15 MiB per process beyond)",
    )
    metrics_port_supervised: bool = Field(
        False,
        description="set by dipr serve in the processes it supervises (leave unset): its own "
        "process serves DIPR_METRICS_PORT with every process's metrics, so these do not open it",
    )
    inference_socket: Path | None = Field(
        None,
        description="set by dipr serve in its front-end processes (leave unset): the inference "
        "process's Unix socket, which makes this process a front-end that holds no model",
    )
    max_queue: int = Field(
        256,
        ge=1,
        description="most crops waiting; beyond it requests get 503 with Retry-After (at least "
        "DIPR_MAX_BOXES and DIPR_MAX_IMAGES)",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="deadline per request, from its headers to its answer, whatever it waits "
        "for (body upload, decoding, detection, inference): 504 by then",
    )
    client_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a client that sends nothing more of a request's headers or body for this "
        "long is disconnected (counted in dipr_stalled_connections_closed_total)",
    )
    decode_budget_mp: float = Field(
        0.0,
        ge=0,
        description="megapixels of decoding admitted and not yet done (a request costs what "
        "its image headers say it may decode); beyond it requests get 503 with Retry-After, at "
        "once; a quarter is kept for light requests (each at most 1/16 of it). 0: what the cores "
        "decode in a third of DIPR_REQUEST_TIMEOUT_S at 100 MP/s each (2000 on 2 cores)",
    )
    cpu_workers: int = Field(
        0,
        ge=0,
        description="threads decoding and warping images, taking turns between requests so "
        "that a small request is not queued behind a large one; 0: one per core",
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After on 503")
    max_request_bytes: int = Field(32 * MiB, ge=1, description="largest request body (413)")
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="largest image, width×height, checked before decoding (413)"
    )
    max_images: int = Field(16, ge=1, description="most images in one request (413)")
    max_boxes: int = Field(64, ge=1, description="most person boxes in one request (413)")
    box_padding: float = Field(PADDING, ge=1.0, description="box enlargement before cropping")
    reduced_decode: bool = Field(
        True,
        description="decode a JPEG at 1/2, 1/4 or 1/8 of its size when every crop samples it "
        "at least that coarsely (faster; false: always decode every pixel)",
    )
    jpeg_decoder: Literal["opencv", "nvimgcodec"] = Field(
        "opencv",
        description="opencv: every image decoded by OpenCV on the CPU; nvimgcodec: JPEGs "
        "decoded on the GPU DIPR_DEVICE_ID by nvJPEG through nvImageCodec (the gpu-decode "
        "extra; its hardware JPEG decoder on A100/H100/H200), always at full scale (no "
        "DIPR_REDUCED_DECODE for JPEG), then copied to the host, where crops are warped as "
        "before; other formats, and JPEGs nvJPEG refuses, stay with OpenCV. For GPU hosts "
        "whose front end is limited by JPEG decoding. Each decoding process holds its own CUDA "
        "context. Refused at start where it cannot decode",
    )
    failure_threshold: int = Field(
        3, ge=1, description="consecutive failed batches after which readiness goes down"
    )
    detect: bool = Field(
        True,
        description="find the persons of an image sent without boxes with the detector "
        "(false: such an image is one whole-image crop, and no detector is loaded)",
    )
    detector_path: Path = Field(
        DEFAULT_DETECTOR_ONNX, description="ONNX person detector following the dipr contract"
    )
    min_person_score: float = Field(
        DEFAULT_MIN_PERSON_SCORE,
        ge=0.0,
        le=1.0,
        description="the detector's box score from which a candidate is a person "
        "(per request: ?min_score=)",
    )
    detector_box: Literal["box", "keypoints"] = Field(
        "box",
        description="what a detected person is cropped by: the detector's box, or the extent "
        "of its own confident keypoints",
    )
    detector_max_batch_size: int = Field(8, ge=1, description="most images in one detection")
    detector_max_queue: int = Field(
        64,
        ge=1,
        description="most images waiting for detection; beyond it requests get 503 with "
        "Retry-After",
    )

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="comma-separated API keys; when any is set (here or in the file), /pose, "
        "/pose/render, /v1/model and a /metrics on the main port need `Authorization: Bearer "
        "KEY` or `X-API-Key: KEY` (401 otherwise)",
    )
    api_keys_file: Path | None = Field(
        None, description="file with one API key per line (e.g. a mounted secret)"
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve /metrics on this port instead, open and apart from the API",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS (off if empty)"
    )
    drain_delay_s: float = Field(
        1.0,
        ge=0,
        description="on SIGTERM, how long readiness says 503 before the listener "
        "closes, so load balancers stop sending",
    )
    shutdown_grace_s: float = Field(
        30.0, gt=0, description="on SIGTERM, the longest wait for accepted requests to finish"
    )
    log_format: Literal["json", "text"] = Field("json", description="log lines as JSON or text")

    def decode_budget(self, cores: int) -> float:
        """DIPR_DECODE_BUDGET_MP, or its default for `cores`: admitted work that a core decodes at
        a conservative 100 MP/s (140–250 measured on the CI machine) ends well within the
        deadline."""
        return self.decode_budget_mp or DECODE_MP_PER_S * cores * self.request_timeout_s / 3

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def all_api_keys(self) -> list[bytes]:
        """The keys from the variable and the file, as bytes for constant-time comparison."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text().splitlines()
            keys += [line.strip() for line in lines if line.strip()]
        return [key.encode() for key in keys]

    @model_validator(mode="after")
    def _boxes_fit_the_queue(self) -> "Settings":
        # A request with more crops than the queue holds would only ever be admitted into an
        # empty queue (the batcher's rule, which also covers the persons a detector finds).
        if max(self.max_boxes, self.max_images) > self.max_queue:
            raise ValueError(
                f"max_boxes ({self.max_boxes}) and max_images ({self.max_images}) must not "
                f"exceed max_queue ({self.max_queue})"
            )
        return self
