"""Which decoder turns an image's bytes into pixels, and how coarsely it can.

`OPENCV` is what the service, evaluation and training decode with: every format by OpenCV, JPEG
at 1/2, 1/4 or 1/8 of its size where the crops allow (`core.images`). `WithJpegDecoder` sends
JPEGs to another decoder (nvImageCodec on a GPU: `core.nvimgcodec_jpeg`), which decodes at full
scale only, and the other formats to OpenCV. The reduction a decode will have is the decoder's to
say (`reduction`): what is admitted, and whether a decode is fine enough for the boxes a detector
found, both depend on it.
"""

from typing import Protocol

from dipr.core.errors import UndecodableImage
from dipr.core.images import DecodedImage, ImageHeader, decode


class ImageDecoder(Protocol):
    def reduction(self, header: ImageHeader, at_most: float) -> int:
        """The reduction `decode(…, at_most)` will decode this image at (1: every pixel)."""
        ...

    def decode(
        self, data: bytes, header: ImageHeader, at_most_reduction: float = 1.0
    ) -> DecodedImage:
        """The picture's RGB pixels at `reduction(header, at_most_reduction)`;
        UndecodableImage if they cannot be had."""
        ...


class OpenCvDecoder:
    """Every format by OpenCV; JPEG at the coarsest exact reduction allowed."""

    def reduction(self, header: ImageHeader, at_most: float) -> int:
        return header.largest_reduction(at_most)

    def decode(
        self, data: bytes, header: ImageHeader, at_most_reduction: float = 1.0
    ) -> DecodedImage:
        return decode(data, header, at_most_reduction)


OPENCV = OpenCvDecoder()


class JpegDecoder(Protocol):
    """A JPEG decoder at full scale (`core.nvimgcodec_jpeg.NvimgcodecJpegDecoder`)."""

    def decode(self, data: bytes, header: ImageHeader) -> DecodedImage: ...


class WithJpegDecoder:
    """JPEGs by `jpeg`, at full scale; PNG, WebP and BMP by OpenCV (at full scale too: only its
    JPEG decoder reduces). A JPEG that `jpeg` cannot decode is tried by OpenCV next: nvJPEG
    refuses some valid JPEGs that libjpeg decodes (arithmetic coding, for one), and the service
    must accept the same images whichever decoder it runs; a corrupt one is then refused by
    OpenCV, with OpenCV's error, as without `jpeg`."""

    def __init__(self, jpeg: JpegDecoder) -> None:
        self.jpeg = jpeg

    def reduction(self, header: ImageHeader, at_most: float) -> int:
        return 1

    def decode(
        self, data: bytes, header: ImageHeader, at_most_reduction: float = 1.0
    ) -> DecodedImage:
        if header.format == "jpeg":
            try:
                return self.jpeg.decode(data, header)
            except UndecodableImage:
                pass  # OpenCV's turn, below
        return decode(data, header, 1.0)
