"""Turn whatever a visitor uploads into a safe, upright 8-bit RGB `PIL.Image`, or refuse it with a message that says
what is wrong and how to fix it.

Every refusal is an `ImageInputError` (a `ValueError`), so an app can show its message as is (e.g. via `gr.Error`).
Size limits are checked from the file's header before any pixel is decoded, so a small file that claims to be huge
(a "decompression bomb") costs microseconds, not gigabytes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 50 megapixels: admits the full-resolution modes of 48/50 MP phone cameras (8064x6048, 8160x6120) and the largest
# ISIC archive images (about 24 MP), while bounding the decoded RGB buffer at about 150 MB. The model itself never
# looks at more than 380x380 pixels, so nothing useful is lost by asking for a downscaled copy beyond that.
MAX_PIXELS = 50_000_000
# Below 32 pixels a side there is no lesion structure left to classify; such files are thumbnails or icons.
MIN_SIDE = 32
# 20 MB: a 50 MP JPEG at high quality is 10-20 MB. Larger files are usually uncompressed PNG/TIFF exports.
MAX_UPLOAD_BYTES = 20_000_000

# Formats a camera, dermatoscope or phone produces. Restricting Pillow to them keeps rarely used decoders (and EPS,
# which runs Ghostscript) away from untrusted bytes. Multi-picture phone JPEGs (MPO) open through "JPEG".
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")
# HEIF brands (bytes 8-12 of the file) of iPhone "High Efficiency" photos, which Pillow cannot decode.
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")

ImageSource = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray]


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
        _load_pixels(source)
        return _to_rgb(ImageOps.exif_transpose(source))
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
    with image:
        _check_size(image.size, max_pixels=max_pixels, min_side=min_side)
        _load_pixels(image)  # Image.open stands on frame 0: the first frame of an animation or multi-page TIFF
        return _to_rgb(ImageOps.exif_transpose(image))


def _load_pixels(image: Image.Image) -> None:
    try:
        image.load()
    except (OSError, SyntaxError, EOFError, ValueError) as err:
        raise ImageInputError(
            f"The {image.format or 'image'} file is damaged or incomplete and could not be decoded ({err}). "
            "Re-export the image or upload it again."
        ) from err


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
    """Convert a decoded image the caller no longer needs (it may be returned as is) to 8-bit RGB."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's own convert("L") clips these at 255 instead of scaling them.
        image = Image.fromarray(_scale_to_uint8(np.asarray(image), mode=image.mode))
    if image.has_transparency_data:
        # Pixels under full transparency hold arbitrary colour (often black, which reads as dark pigment or
        # dermatoscope vignetting). Compositing on white shows what a viewer sees on a page, a neutral background.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ImageInputError(
            f"Images in colour mode '{image.mode}' are not supported. Save the image as an RGB JPEG or PNG."
        ) from err


def _scale_to_uint8(values: np.ndarray, *, mode: str) -> np.ndarray:
    """Map high-bit-depth or float pixel values onto 0..255, keeping the full tonal range."""
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise ImageInputError("The image contains NaN or infinite pixel values. Re-export it as an 8-bit image.")
    low, high = float(values.min()), float(values.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        nominal_low, nominal_high = 0.0, 1.0
    elif mode != "F" and low >= 0.0 and high <= 65535.0:
        nominal_low, nominal_high = 0.0, 65535.0
    else:
        # No nominal range to honour (signed 32-bit or unbounded float data): stretch what is there.
        nominal_low, nominal_high = low, max(high, low + 1e-12)
    scaled = (values - nominal_low) * (255.0 / (nominal_high - nominal_low))
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
        array = _scale_to_uint8(array, mode="F")
    elif array.dtype == np.uint16:
        array = _scale_to_uint8(array, mode="I;16")
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
