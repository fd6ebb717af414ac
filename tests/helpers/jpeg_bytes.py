"""Hand-made JPEG segments for the image tests."""

import struct


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def exif_app1(orientation: int, big_endian: bool = True) -> bytes:
    """APP1 'Exif' segment: a TIFF header and IFD0 holding one SHORT entry, Orientation (0x0112)."""
    e = ">" if big_endian else "<"
    tiff = (
        (b"MM\x00\x2a" if big_endian else b"II\x2a\x00")
        + struct.pack(e + "I", 8)
        + struct.pack(e + "H", 1)
        + struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0)
        + struct.pack(e + "I", 0)
    )
    return jpeg_segment(0xE1, b"Exif\x00\x00" + tiff)
