"""Turn whatever a visitor uploads into a safe, upright 8-bit RGB `PIL.Image`, or refuse it with a message that says
what is wrong and how to fix it.

Every refusal is an `ImageInputError` (a `ValueError`), so an app can show its message as is (e.g. via `gr.Error`).
Size limits are checked from the file's header before any pixel is decoded, so a small file that claims to be huge
(a "decompression bomb") costs microseconds, not gigabytes. Colour conversion runs on bands of rows, so decoding any
accepted file costs at most about `MAX_DECODE_BYTES_PER_PIXEL` bytes per pixel, whatever its bit depth or mode.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 50 megapixels: admits the full-resolution modes of 48/50 MP phone cameras (8064x6048, 8160x6120) and the largest
# ISIC archive images (about 24 MP), while bounding the decoded RGB buffer at 200 MB (Pillow keeps 4 bytes per RGB
# pixel). The model itself never looks at more than 380x380 pixels, so nothing useful is lost by asking for a
# downscaled copy beyond that.
MAX_PIXELS = 50_000_000
# Peak memory of a decode: the decoded file (at most 4 bytes per pixel in Pillow) plus the RGB result (4 bytes), so
# 400 MB at MAX_PIXELS. 16-bit, 32-bit and float images are scaled to 8 bits band by band, never as a float copy.
MAX_DECODE_BYTES_PER_PIXEL = 8
# Conversions work on bands of rows holding about this many pixels (a few MB of temporary arrays).
BAND_PIXELS = 1 << 20
# Below 32 pixels a side there is no lesion structure left to classify; such files are thumbnails or icons.
MIN_SIDE = 32
# 20 MB: a 50 MP JPEG at high quality is 10-20 MB. Larger files are usually uncompressed PNG/TIFF exports.
MAX_UPLOAD_BYTES = 20_000_000

# Formats a camera, dermatoscope or phone produces. Restricting Pillow to them keeps rarely used decoders (and EPS,
# which runs Ghostscript) away from untrusted bytes. Multi-picture phone JPEGs (MPO) open through "JPEG".
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")
# HEIF brands (bytes 8-12 of the file) of iPhone "High Efficiency" photos, which Pillow cannot decode.
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
# Modes with more than 8 bits per sample: scaled to 0..255 (Pillow's own convert("L") clips them at 255).
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

ImageSource = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray]


# What Pillow's readers raise on a damaged or truncated file, from the header to the last pixel (a TIFF tag of the
# wrong type reaches the decoder as a string: TypeError).
DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, TypeError, IndexError, KeyError, struct.error)


class ImageInputError(ValueError):
    """An upload that cannot be used as a lesion image; the message names the problem and the fix."""


def load_rgb_image(
    source: ImageSource | None,
    *,
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> Image.Image:
    """Decode a path, encoded bytes, a PIL image or an array into an upright 8-bit RGB image.

    Args:
        source: a file path, the file's bytes, a `PIL.Image.Image`, or an HxW / HxWxC array (uint8, uint16, bool,
            or float in [0, 1]). `None` (nothing uploaded) is refused with a message.
        max_pixels: refuse images with more pixels than this (checked from the header, before decoding).
        min_side: refuse images whose shorter side is below this many pixels.
        max_bytes: refuse paths and byte strings larger than this many bytes.

    Returns:
        A fully loaded RGB image, not tied to any open file: EXIF orientation applied, transparency composited on
        white, 16-bit and float data scaled to 0..255, only the first frame of an animation.

    Raises:
        ImageInputError: the input is not a usable image; the message says why and what to do.
    """
    if source is None:
        raise ImageInputError("No image was provided. Upload a photo of the lesion (JPEG or PNG).")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels=max_pixels, min_side=min_side)
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels=max_pixels, min_side=min_side)
        return _to_rgb(_load_upright(source, in_place=False))
    if isinstance(source, (bytes, bytearray, memoryview)):
        _check_byte_count(memoryview(source).nbytes, max_bytes=max_bytes)
        return _decode(io.BytesIO(source), max_pixels=max_pixels, min_side=min_side)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"No image file at '{path}'. Check the path, or upload the file again.")
        _check_byte_count(path.stat().st_size, max_bytes=max_bytes)
        with path.open("rb") as file:
            return _decode(file, max_pixels=max_pixels, min_side=min_side)
    raise TypeError(
        f"load_rgb_image takes a path, bytes, a PIL image or a numpy array, not {type(source).__name__}."
    )


def _check_byte_count(n_bytes: int, *, max_bytes: int) -> None:
    if n_bytes == 0:
        raise ImageInputError("The uploaded file is empty (0 bytes). Upload the image again.")
    if n_bytes > max_bytes:
        raise ImageInputError(
            f"The file is {n_bytes / 1e6:.1f} MB, above the {max_bytes / 1e6:.0f} MB upload limit. "
            "Save it as a JPEG or downscale it, then upload again."
        )


def _check_size(size: tuple[int, int], *, max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageInputError(
            f"The image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), above the "
            f"{max_pixels / 1e6:g} megapixel limit. Downscale it (the classifier uses at most 380x380 pixels) "
            "and upload again."
        )
    if min(width, height) < min_side:
        raise ImageInputError(
            f"The image is only {width}x{height} pixels; at least {min_side}x{min_side} is needed to see a "
            "lesion. Upload the original photo rather than a thumbnail or icon."
        )


def _decode(file: BinaryIO, *, max_pixels: int, min_side: int) -> Image.Image:
    """Open from a binary file, check the header's size, then decode the first frame."""
    try:
        # Image.open reads only the header; Pillow raises DecompressionBombError here for absurd sizes.
        image = Image.open(file, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # The warning arrives as an exception only where warnings are configured as errors.
        raise ImageInputError(
            f"The image is far larger than the {max_pixels / 1e6:g} megapixel limit. Downscale it and upload "
            "again."
        ) from err
    except UnidentifiedImageError as err:
        raise ImageInputError(_unidentified_message(file)) from err
    except DECODE_ERRORS as err:  # a known format whose header its reader refuses (e.g. an unsupported BMP header)
        raise ImageInputError(_damaged_message("image", err)) from err
    with image:
        _check_size(image.size, max_pixels=max_pixels, min_side=min_side)
        # Image.open stands on frame 0: the first frame of an animation or multi-page TIFF. In place: no second copy
        # of a large image.
        return _to_rgb(_load_upright(image, in_place=True))


def _load_upright(image: Image.Image, *, in_place: bool) -> Image.Image:
    """Decode the pixels and apply the EXIF orientation; a damaged file (pixels or EXIF block) is an input error."""
    try:
        image.load()
        if in_place:
            ImageOps.exif_transpose(image, in_place=True)
            return image
        return ImageOps.exif_transpose(image)
    except DECODE_ERRORS as err:
        raise ImageInputError(_damaged_message(image.format or "image", err)) from err


def _damaged_message(kind: str, err: BaseException) -> str:
    return (f"The {kind} file is damaged or incomplete and could not be decoded ({err}). Re-export the image or "
            "upload it again.")


def _unidentified_message(file: BinaryIO) -> str:
    file.seek(0)
    head = file.read(16)
    if head.startswith(b"%PDF"):
        return "This is a PDF document, not an image. Export the page or photo as JPEG or PNG and upload that."
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return (
            "HEIC/HEIF photos (the iPhone default) cannot be read. Export the photo as JPEG (or set Camera > "
            "Formats > Most Compatible) and upload again."
        )
    return (
        "This file is not an image that can be read. Upload a photo of the lesion as JPEG, PNG, WebP, TIFF, BMP "
        "or GIF."
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image the caller no longer needs (it may be returned as is) to 8-bit RGB, band by band."""
    if image.mode == "RGB":
        return image
    value_range = _nominal_range(image) if image.mode in HIGH_BIT_MODES else None
    rgb = Image.new("RGB", image.size)
    rows = max(1, BAND_PIXELS // image.width)
    for top in range(0, image.height, rows):
        box = (0, top, image.width, min(image.height, top + rows))
        rgb.paste(_band_to_rgb(image.crop(box), value_range), box[:2])
    return rgb


def _band_to_rgb(band: Image.Image, value_range: tuple[float, float] | None) -> Image.Image:
    if value_range is not None:
        band = Image.fromarray(_scale_to_uint8(np.asarray(band), value_range))
    if band.has_transparency_data:
        # Pixels under full transparency hold arbitrary colour (often black, which reads as dark pigment or
        # dermatoscope vignetting). Compositing on white shows what a viewer sees on a page, a neutral background.
        rgba = band.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return band.convert("RGB")
    except ValueError as err:
        raise ImageInputError(
            f"Images in colour mode '{band.mode}' are not supported. Save the image as an RGB JPEG or PNG."
        ) from err


def _nominal_range(image: Image.Image) -> tuple[float, float]:
    """The values that map to 0 and 255 in a high-bit-depth or float image, read band by band."""
    low, high = np.inf, -np.inf
    rows = max(1, BAND_PIXELS // image.width)
    for top in range(0, image.height, rows):
        band = np.asarray(image.crop((0, top, image.width, min(image.height, top + rows))))
        if not np.isfinite(band).all():
            raise ImageInputError("The image contains NaN or infinite pixel values. Re-export it as an 8-bit image.")
        low, high = min(low, float(band.min())), max(high, float(band.max()))
    return _value_range(low, high, floating=image.mode == "F")


def _value_range(low: float, high: float, *, floating: bool) -> tuple[float, float]:
    """[0, 1] for float data inside it, [0, 65535] for integer data inside it, else the data's own range."""
    if floating and low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    if not floating and low >= 0.0 and high <= 65535.0:
        return 0.0, 65535.0
    # No nominal range to honour (signed 32-bit or unbounded float data): stretch what is there.
    return low, high if high > low else low + 1.0


def _scale_to_uint8(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map pixel values onto 0..255 linearly, `value_range` to (0, 255), keeping the full tonal range."""
    low, high = value_range
    scaled = (values.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _array_to_rgb(array: np.ndarray, *, max_pixels: int, min_side: int) -> Image.Image:
    """An HxW or HxWxC array (C = 1, 2, 3 or 4) to RGB; floats must lie in [0, 1]."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] > 4:
        raise ImageInputError(
            f"The array has shape {array.shape}, which looks channels-first; pass array.transpose(1, 2, 0) "
            "(height, width, channels)."
        )
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4)):
        raise ImageInputError(
            f"An image array must have shape (height, width) or (height, width, 1-4 channels), not {array.shape}."
        )
    _check_size((array.shape[1], array.shape[0]), max_pixels=max_pixels, min_side=min_side)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ImageInputError(
                f"Float image arrays must hold values in [0, 1]; this one spans [{np.nanmin(array):g}, "
                f"{np.nanmax(array):g}]. Divide 0-255 data by 255 or pass it as uint8."
            )
        array = _scale_to_uint8(array, (0.0, 1.0))
    elif array.dtype == np.uint16:
        array = _scale_to_uint8(array, (0.0, 65535.0))
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ImageInputError(
                f"Integer image arrays must hold values in 0..255 (or be uint16); this {array.dtype} array spans "
                f"[{array.min()}, {array.max()}]."
            )
        array = array.astype(np.uint8)
    else:
        raise ImageInputError(f"Image arrays of dtype {array.dtype} are not supported; use uint8 or float in [0, 1].")
    # A copy: Image.fromarray can share the array's memory, and the caller may keep writing to it.
    return _to_rgb(Image.fromarray(np.array(array, dtype=np.uint8)))
