"""JPEG bytes → RGB pixels with NVIDIA nvImageCodec: on a GPU by nvJPEG (the hardware JPEG engine
of A100, H100 and H200, else CUDA kernels), then copied to the host, so that the crops are warped
on the CPU exactly as after OpenCV's decode; or, for tests and machines without a GPU, on the CPU
(nvImageCodec's libjpeg-turbo extension).

Always at full scale: nvJPEG has no reduced-scale IDCT (`DecodedImage.reduction` is 1). The
header has been checked already (`core.images.read_header`: format, size, pixel limit); this only
decodes, and refuses what `core.images.decode` refuses, with the same errors: corrupt or truncated
data, and a decoded size that is not the header's (in either orientation, EXIF 5–8 swap the axes).

Measured against OpenCV's full-scale decode (`core.images.decode`): the CPU variant is
bit-identical (both are libjpeg-turbo 3.1: the same integer IDCT and "fancy" chroma upsampling),
EXIF orientations and grayscale included, but for CMYK JPEGs (one grey level: another rounding of
CMYK to RGB). nvJPEG on a GPU computes its own IDCT and, unless
`options=":fancy_upsampling=1"`, replicates chroma samples instead of interpolating them: expect a
few grey levels apart, more on sharp colour edges (to be measured on a GPU).

The wheel (`nvidia-nvimgcodec-cu13`, the `gpu-decode` extra) is imported on first construction
only: importing it prints "Failed to load nvJPEG/nvJPEG2000/nvTIFF" lines to stderr for every
library it cannot find (harmless: they are optional extensions, and the CPU variant needs none).
"""

import importlib
import threading
from typing import Any, Literal

import cv2
import numpy as np

from dipr.core.errors import UndecodableImage
from dipr.core.images import DecodedImage, ImageHeader

Device = Literal["gpu", "cpu"]
# What proves a decoder works: nvImageCodec only warns and returns None when no backend can
# decode, so a decoder that was constructed may still decode nothing. A flat colour, so that the
# check also catches swapped channels (any IDCT gets a flat block within a level or two).
_PROOF_RGB = (200, 100, 50)
_PROOF_SIZE = (16, 8)  # width, height: not square, so a transposed result shows too


class JpegDecoderUnavailable(RuntimeError):
    """nvImageCodec cannot decode here: not installed, no usable GPU, no nvJPEG library."""


class NvimgcodecJpegDecoder:
    """JPEGs decoded by nvImageCodec, on `device` "gpu" (CUDA device `device_id`; nvImageCodec's
    GPU backends in its order: the hardware decoder, then CUDA, then hybrid CPU Huffman + CUDA) or
    "cpu" (libjpeg-turbo). Thread-safe: each thread decodes with its own nvImageCodec decoder,
    made on its first call, because one decoder used by two threads at once fails (one of the two
    calls returned None when tried). `options`: nvImageCodec's decoder options string, e.g.
    ":fancy_upsampling=1" (interpolated chroma, as libjpeg's; slower on the GPU).

    Construction decodes a tiny JPEG, and raises JpegDecoderUnavailable if that fails.
    """

    def __init__(self, device: Device, device_id: int = 0, *, options: str = "") -> None:
        if device not in ("gpu", "cpu"):
            raise ValueError(f"device must be 'gpu' or 'cpu', not {device!r}")
        self.device = device
        self.device_id = device_id
        self.options = options
        self._codec = _import_nvimgcodec()
        codec = self._codec
        self._params = codec.DecodeParams(
            apply_exif_orientation=True,  # as cv2.IMREAD_COLOR does
            color_spec=codec.ColorSpec.SRGB,  # grayscale, CMYK, YCCK → RGB, as OpenCV does
            allow_any_depth=False,  # 8 bits per sample (12-bit and lossless JPEG scaled down)
            sample_format=codec.SampleFormat.I_RGB,  # interleaved H×W×3
        )
        self._local = threading.local()
        self._prove()

    @property
    def where(self) -> str:
        return f"GPU {self.device_id}" if self.device == "gpu" else "the CPU"

    def decode(self, data: bytes, header: ImageHeader) -> DecodedImage:
        """The JPEG's RGB pixels, at full scale, after EXIF orientation; UndecodableImage if it
        cannot be decoded or its size is not the header's."""
        if header.format != "jpeg":
            raise ValueError(f"only JPEG is decoded here, not {header.format}")
        image = self._decoder().decode(data, params=self._params)
        if image is None:  # nvImageCodec warns (stderr) and returns None: corrupt, truncated, …
            raise UndecodableImage("corrupt or truncated JPEG data")
        host = image.cpu()  # from the GPU: a copy into host memory; on the CPU: itself
        if host is None:
            raise UndecodableImage("the decoded JPEG could not be copied to the host")
        pixels = np.asarray(host)  # a view that keeps `host` (its memory) alive
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise UndecodableImage(f"unexpected decoded JPEG image {pixels.dtype} {pixels.shape}")
        expected = (header.height, header.width)
        if pixels.shape[:2] not in (expected, expected[::-1]):
            raise UndecodableImage(
                f"the JPEG header declares {header.width}x{header.height} but the data decodes "
                f"to {pixels.shape[1]}x{pixels.shape[0]}"
            )
        # Rows a GPU copy pads to an aligned pitch are repacked; otherwise no copy.
        return DecodedImage(np.ascontiguousarray(pixels), 1)

    def _decoder(self) -> Any:
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            decoder = self._local.decoder = self._new_decoder()
        return decoder

    def _new_decoder(self) -> Any:
        codec = self._codec
        if self.device == "cpu":
            # The explicit backend matters: by default nvImageCodec asks CUDA for its devices
            # first, and without a GPU it makes a decoder that decodes nothing.
            device_id, kinds = codec.NVIMGCODEC_DEVICE_CPU_ONLY, [codec.BackendKind.CPU_ONLY]
        else:
            # GPU backends only: with CPU_ONLY among them, a GPU that nvJPEG cannot use would
            # fall back to libjpeg-turbo silently, and DIPR_JPEG_DECODER would decode on the CPU.
            device_id = self.device_id
            kinds = [
                codec.BackendKind.HW_GPU_ONLY,
                codec.BackendKind.GPU_ONLY,
                codec.BackendKind.HYBRID_CPU_GPU,
            ]
        # One CPU thread per decoder: the callers' threads (one decoder each) are the
        # parallelism; the default, a thread per core for every decoder, would oversubscribe.
        return codec.Decoder(
            device_id=device_id,
            max_num_cpu_threads=1,
            backends=[codec.Backend(kind) for kind in kinds],
            options=self.options,
        )

    def _prove(self) -> None:
        """Decode a tiny JPEG now (in this thread's decoder): construction fails here, with the
        reason, rather than every request later."""
        width, height = _PROOF_SIZE
        bgr = np.full((height, width, 3), _PROOF_RGB[::-1], np.uint8)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError("could not encode the test JPEG")
        hint = (
            f" (is CUDA device {self.device_id} there and usable, and nvJPEG, libnvjpeg.so.13, "
            "installed?)"
            if self.device == "gpu"
            else ""
        )
        try:
            image = self._decoder().decode(encoded.tobytes(), params=self._params)
            pixels = None if image is None else np.asarray(image.cpu())
        except Exception as error:  # no device, a driver or CUDA error, …
            raise JpegDecoderUnavailable(
                f"nvImageCodec cannot decode on {self.where}: {error}{hint}"
            ) from error
        if pixels is None:
            raise JpegDecoderUnavailable(
                f"nvImageCodec decodes no JPEG on {self.where}: none of its backends could{hint}"
            )
        mean = pixels.reshape(-1, 3).mean(axis=0) if pixels.ndim == 3 else pixels.mean()
        if pixels.shape != (height, width, 3) or np.abs(mean - _PROOF_RGB).max() > 8:
            raise JpegDecoderUnavailable(
                f"nvImageCodec on {self.where} decoded a {width}x{height} RGB test JPEG to "
                f"{pixels.shape} of mean colour {np.round(mean).tolist()}, not {list(_PROOF_RGB)}"
            )


def _import_nvimgcodec() -> Any:
    try:
        return importlib.import_module("nvidia.nvimgcodec")
    except ImportError as error:
        raise JpegDecoderUnavailable(
            f"nvImageCodec is not installed ({error}): pip install 'dipr[gpu-decode]' "
            "(in a checkout: .venv/bin/pip install -e '.[gpu-decode]')"
        ) from error
