"""The service's work, assembled from the settings: the one object the HTTP layer is handed.

`Runtime.load` gets the models (`LocalInference`: the pose model and, unless detection is off,
the person detector, one batcher each, warmed up; or, in a front-end process of the front-end
layout, `RemoteInference`: the same models in the inference process, fed through shared memory),
the decode budget, the threads for CPU work and the pipeline of stages (admit → decode →
letterbox → crop → detect → crop → pose → back to image pixels), and only then reports ready.
The HTTP layer calls `estimate` and reads `model`, `detector`, `provider` and `readiness()`; it
never sees a session, a batcher or a stage.

Every process that decodes (the one process, or each front-end process) makes its own image
decoder here, as DIPR_JPEG_DECODER says: OpenCV, or nvImageCodec on the GPU for JPEGs.
"""

import asyncio
import logging
import os
import time
from collections.abc import Sequence

from dipr.core.decoders import OPENCV, ImageDecoder, WithJpegDecoder
from dipr.core.detector_contract import DetectorInfo
from dipr.core.errors import DeadlineExceeded, InvalidInput, NotReady, Overloaded
from dipr.core.nvimgcodec_jpeg import JpegDecoderUnavailable, NvimgcodecJpegDecoder
from dipr.core.pose_contract import ModelInfo
from dipr.service.admission import DecodeBudget
from dipr.service.fair_pool import FairPool
from dipr.service.inference import LocalInference
from dipr.service.metrics import ServiceMetrics
from dipr.service.pipeline import ImageInput, ImagePoses, Pipeline, PoseOptions, Stage
from dipr.service.remote_inference import RemoteInference
from dipr.service.settings import Settings
from dipr.service.stages.admit import AdmitStage
from dipr.service.stages.crop import CropStage
from dipr.service.stages.decode import DecodeStage
from dipr.service.stages.detect import DetectStage
from dipr.service.stages.letterbox import LetterboxStage
from dipr.service.stages.pose import PoseStage
from dipr.service.stages.to_image import ToImageStage

log = logging.getLogger("dipr.service")


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def image_decoder(settings: Settings) -> ImageDecoder:
    """The decoder DIPR_JPEG_DECODER names, made (and, for nvImageCodec, proven on a tiny JPEG)
    in this process; JpegDecoderUnavailable, naming the variable, if it cannot decode here."""
    if settings.jpeg_decoder == "opencv":
        return OPENCV
    try:
        return WithJpegDecoder(NvimgcodecJpegDecoder("gpu", settings.device_id))
    except JpegDecoderUnavailable as error:
        raise JpegDecoderUnavailable(f"DIPR_JPEG_DECODER=nvimgcodec: {error}") from error


class Runtime:
    def __init__(self, settings: Settings, decoder: ImageDecoder | None = None) -> None:
        """`decoder`: the image decoder to use instead of the one DIPR_JPEG_DECODER names (tests
        use nvImageCodec on the CPU, which no setting offers)."""
        self.settings = settings
        self._decoder = decoder
        self.metrics = ServiceMetrics()
        self.model: ModelInfo | None = None
        self.detector: DetectorInfo | None = None
        self.provider: str | None = None
        self._inference: LocalInference | RemoteInference | None = None
        self._pipeline: Pipeline | None = None
        self._pool: FairPool | None = None
        self._not_ready: str | None = "loading the models"

    def load(self) -> None:
        """Load the models, warm them up, start batching; blocking (run it off the event loop).
        A model or provider that cannot serve leaves the runtime unready, with the reason. In a
        front-end process: wait for the inference process to have loaded them."""
        s = self.settings
        decoder = self._decoder
        if decoder is None:
            try:
                decoder = image_decoder(s)
            except JpegDecoderUnavailable as error:
                # Before the models: a replica that could decode nothing is unready at once.
                log.error("not ready: %s", error)
                self._not_ready = str(error)
                return
        if s.inference_socket is not None:
            remote = RemoteInference(s.inference_socket)
            self._inference = remote
            remote.start()  # returns at its first greeting: the models are loaded there
            # The decoding share of this process: the host's cores and budget, split between
            # the front-end processes.
            share = max(1, s.frontend_processes)
            inference: LocalInference | RemoteInference = remote
        else:
            local = LocalInference(s, self.metrics)
            self._inference = local
            local.load()
            share = 1
            inference = local
        pose_info, pose = inference.pose_info, inference.pose
        if pose_info is None or pose is None:
            self._not_ready = inference.readiness() or "the models did not load"
            return
        crop = CropStage(pose_info.input_size, s.box_padding, decoder)
        # Images sent with boxes are cropped right after decoding, the others after detection.
        cropping: list[Stage] = [crop]
        decode_size = pose_info.input_size
        detecting = s.detect and inference.detector is not None
        if detecting and inference.detector_info is not None and inference.detector is not None:
            detector_info = inference.detector_info
            # The whole picture is decoded for the larger of the two inputs.
            width, height = detector_info.input_size
            decode_size = (max(decode_size[0], width), max(decode_size[1], height))
            cropping = [
                LetterboxStage(detector_info.input_size),
                crop,
                DetectStage(inference.detector, s.min_person_score, s.detector_box),
                crop,
            ]
            self.detector = detector_info
        cores = usable_cores()
        budget = DecodeBudget(s.decode_budget(cores) / share, observer=self.metrics)
        self.metrics.decode_budget.set(budget.megapixels)
        # One more thread for light requests: a photo is not queued behind 7000×7000 decodes.
        self._pool = FairPool(s.cpu_workers or max(1, cores // share), light_workers=1)
        self._pool.start()
        admit = AdmitStage(
            budget,
            decode_size,
            s.box_padding,
            s.max_image_pixels,
            s.reduced_decode,
            detecting=detecting,
            decoder=decoder,
        )
        self._pipeline = Pipeline(
            [
                admit,
                DecodeStage(decode_size, s.box_padding, s.reduced_decode, decoder),
                *cropping,
                PoseStage(pose),
                ToImageStage(),
            ],
            self._pool,
            observer=self.metrics,
        )
        self.model, self.provider = pose_info, inference.provider
        self._not_ready = None
        log.info("ready: %s %s on %s", pose_info.name, pose_info.version, self.provider)

    async def estimate(
        self, images: Sequence[ImageInput], options: PoseOptions, deadline: float
    ) -> list[ImagePoses]:
        """Poses of every person box (or person found, or whole image) of `images`, in order,
        by `deadline` (time.monotonic()) or DeadlineExceeded then, whatever the request waits
        for; its work not yet started is dropped. Loading, draining or a refused GPU refuse
        new work (NotReady); a streak of failed batches does not: it only takes the replica out
        of rotation, and the next good batch ends it."""
        if self._not_ready is not None or self._pipeline is None:
            raise NotReady(f"not ready: {self._not_ready}")
        if options.detect and self.detector is None:
            raise InvalidInput("person detection is off in this service (DIPR_DETECT=false)")
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                results = await self._pipeline.run(images, options, deadline)
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed before it was done") from None
        except Overloaded as refusal:
            self.metrics.overloaded.labels(refusal.cause).inc()
            raise
        self.metrics.images.inc(len(results))
        for result in results:
            self.metrics.persons.inc(len(result.persons))
            self.metrics.persons_per_image.observe(len(result.persons))
        return results

    def readiness(self) -> str | None:
        """None when ready, else why not."""
        if self._not_ready is not None:
            return self._not_ready
        if self._inference is not None:
            return self._inference.readiness()
        return None

    def begin_drain(self) -> None:
        """Readiness goes 503 and new work is refused; accepted work goes on."""
        self._not_ready = "shutting down"

    def stop(self) -> None:
        """Finish what the batchers and the CPU threads accepted, then end them."""
        self.begin_drain()
        self.stop_batchers()
        if self._pool is not None:
            self._pool.stop()

    def stop_batchers(self) -> None:
        if self._inference is not None:
            self._inference.stop()
