"""load_rgb_image: every kind of upload becomes an upright 8-bit RGB image, or a refusal that names the fix."""

import io
import struct
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from skin_fusion.serving import image_io
from skin_fusion.serving.image_io import (
    MAX_DECODE_BYTES_PER_PIXEL,
    MAX_UPLOAD_BYTES,
    MIN_SIDE,
    ImageInputError,
    load_rgb_image,
)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid 40x40 PNG whose IHDR chunk (and its CRC) is patched to claim width x height."""
    data = encode(Image.new("RGB", (40, 40)))
    start = data.index(b"IHDR")
    chunk = bytearray(data[start : start + 17])  # type + 13 bytes of header
    chunk[4:12] = struct.pack(">II", width, height)
    return data[:start] + bytes(chunk) + struct.pack(">I", zlib.crc32(bytes(chunk))) + data[start + 21 :]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


# Ordinary inputs


def test_jpeg_path_gives_loaded_rgb_image_that_outlives_the_file(tmp_path):
    path = tmp_path / "lesion.jpg"
    Image.new("RGB", (64, 48), (180, 90, 60)).save(path, quality=95)
    image = load_rgb_image(str(path))
    path.unlink()
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.abs(pixels(image) - (180, 90, 60)).max() <= 3


def test_bytes_path_and_pathlib_give_the_same_pixels(tmp_path):
    data = encode(Image.new("RGB", (40, 40), (10, 200, 30)))
    (tmp_path / "a.png").write_bytes(data)
    from_bytes = load_rgb_image(data)
    assert np.array_equal(pixels(from_bytes), pixels(load_rgb_image(tmp_path / "a.png")))
    assert np.array_equal(pixels(from_bytes), pixels(load_rgb_image(bytearray(data))))
    assert np.array_equal(pixels(from_bytes), pixels(load_rgb_image(memoryview(data))))


def test_pil_input_is_copied_not_modified():
    original = Image.new("RGB", (40, 40), (1, 2, 3))
    image = load_rgb_image(original)
    image.putpixel((0, 0), (255, 255, 255))
    assert original.getpixel((0, 0)) == (1, 2, 3)


def test_webp_is_accepted():
    image = load_rgb_image(encode(Image.new("RGB", (40, 40), (200, 0, 0)), "WEBP", lossless=True))
    assert image.getpixel((5, 5)) == (200, 0, 0)


# Arrays


def test_uint8_array_is_copied_into_an_rgb_image():
    array = np.full((40, 50, 3), 77, dtype=np.uint8)
    image = load_rgb_image(array)
    array[:] = 0
    assert image.size == (50, 40) and image.getpixel((0, 0)) == (77, 77, 77)


def test_float_array_in_unit_range_spans_0_to_255():
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (40, 1))
    values = pixels(load_rgb_image(np.stack([ramp] * 3, axis=-1)))
    assert values.min() == 0 and values.max() == 255


def test_float_array_outside_unit_range_is_refused_with_the_fix():
    with pytest.raises(ImageInputError, match=r"\[0, 1\].*Divide 0-255 data by 255"):
        load_rgb_image(np.full((40, 40, 3), 200.0))


def test_grayscale_and_single_channel_arrays_become_gray_rgb():
    for array in (np.full((40, 40), 90, np.uint8), np.full((40, 40, 1), 90, np.uint8)):
        assert load_rgb_image(array).getpixel((3, 3)) == (90, 90, 90)


def test_uint16_array_is_scaled_not_clipped():
    array = np.full((40, 40, 3), 32768, dtype=np.uint16)
    assert load_rgb_image(array).getpixel((0, 0)) == (128, 128, 128)


def test_channels_first_array_is_refused_with_the_transpose():
    with pytest.raises(ImageInputError, match=r"transpose\(1, 2, 0\)"):
        load_rgb_image(np.zeros((3, 64, 64), np.uint8))


def test_rgba_array_is_composited_on_white():
    array = np.zeros((40, 40, 4), np.uint8)  # black, fully transparent
    assert load_rgb_image(array).getpixel((0, 0)) == (255, 255, 255)


# Refusals: not an image, damaged, wrong size


def test_none_says_to_upload_an_image():
    with pytest.raises(ImageInputError, match="No image was provided"):
        load_rgb_image(None)


def test_error_is_a_value_error():
    assert issubclass(ImageInputError, ValueError)


def test_text_file_is_refused_with_the_supported_formats(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("age 54, back, itchy\n" * 20)
    with pytest.raises(ImageInputError, match="not an image.*JPEG, PNG"):
        load_rgb_image(path)


def test_pdf_is_refused_with_export_advice():
    with pytest.raises(ImageInputError, match="PDF document.*Export"):
        load_rgb_image(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")


def test_heic_is_refused_with_export_advice():
    with pytest.raises(ImageInputError, match="HEIC.*JPEG"):
        load_rgb_image(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))


def test_formats_outside_the_allowlist_are_not_decoded():
    # Pillow recognises EPS (and would run Ghostscript on it); uploads are limited to camera formats.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n%%EOF\n"
    with pytest.raises(ImageInputError, match="not an image"):
        load_rgb_image(eps)


def test_truncated_jpeg_is_refused_as_damaged():
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=90)
    with pytest.raises(ImageInputError, match="damaged or incomplete.*upload it again"):
        load_rgb_image(data[: len(data) // 2])


def bmp_with_header_size(size: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (64, 64), (200, 150, 130)), "BMP"))
    data[14:18] = struct.pack("<I", size)  # the DIB header's own size: 40 for the common BITMAPINFOHEADER
    return bytes(data)


def truncated_webp() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "WEBP", quality=90)
    return data[: len(data) // 3]


def tiff_with_text_strip_offsets() -> bytes:
    """A TIFF whose StripOffsets tag (273) claims the ASCII type: Pillow's decoder then gets a string (TypeError)."""
    data = bytearray(encode(Image.new("RGB", (96, 96), (200, 150, 130)), "TIFF"))
    directory = struct.unpack_from("<I", data, 4)[0]
    for index in range(struct.unpack_from("<H", data, directory)[0]):
        entry = directory + 2 + 12 * index
        if struct.unpack_from("<H", data, entry)[0] == 273:
            struct.pack_into("<H", data, entry + 2, 2)
    return bytes(data)


# Files whose format is recognised but whose header its reader refuses or misreads: Pillow raises OSError from
# Image.open itself, or TypeError while decoding.
DAMAGED_HEADERS = {"BMP with an unknown header type": lambda: bmp_with_header_size(7), "truncated WebP": truncated_webp,
                   "TIFF with a text tag for its strip offsets": tiff_with_text_strip_offsets}


@pytest.mark.parametrize("damage", list(DAMAGED_HEADERS))
def test_a_file_whose_header_its_reader_refuses_is_refused_as_damaged(damage):
    with pytest.raises(ImageInputError, match="damaged or incomplete.*upload it again"):
        load_rgb_image(DAMAGED_HEADERS[damage]())


def test_empty_file_is_refused():
    with pytest.raises(ImageInputError, match="empty"):
        load_rgb_image(b"")


def test_missing_path_is_refused_with_the_path(tmp_path):
    with pytest.raises(ImageInputError, match="No image file at .*nowhere.png"):
        load_rgb_image(tmp_path / "nowhere.png")


def test_one_pixel_png_is_refused_naming_the_minimum():
    with pytest.raises(ImageInputError, match=f"only 1x1 pixels; at least {MIN_SIDE}x{MIN_SIDE}"):
        load_rgb_image(encode(Image.new("RGB", (1, 1))))


def test_shorter_side_below_the_minimum_is_refused_and_the_minimum_accepted():
    with pytest.raises(ImageInputError, match="at least 32x32"):
        load_rgb_image(encode(Image.new("RGB", (500, MIN_SIDE - 1))))
    assert load_rgb_image(encode(Image.new("RGB", (MIN_SIDE, MIN_SIDE)))).size == (MIN_SIDE, MIN_SIDE)


def test_file_over_the_upload_limit_is_refused_before_reading():
    with pytest.raises(ImageInputError, match=f"above the {MAX_UPLOAD_BYTES / 1e6:.0f} MB upload limit"):
        load_rgb_image(bytes(MAX_UPLOAD_BYTES + 1))


def test_large_path_is_refused_by_its_size_on_disk(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.new("RGB", (64, 64))) + bytes(5000))
    with pytest.raises(ImageInputError, match="MB upload limit"):
        load_rgb_image(path, max_bytes=4000)


# Decompression bombs: refused from the header, before any pixel is decoded


@pytest.mark.parametrize("width, height", [(30000, 30000), (8000, 7000)])
def test_header_claiming_a_huge_size_is_refused_before_decoding(width, height):
    # The file holds 40x40 pixels of data: decoding would fail as "damaged", not as "megapixel limit".
    start = time.perf_counter()
    with pytest.raises(ImageInputError, match="megapixel limit. Downscale"):
        load_rgb_image(png_claiming_size(width, height))
    assert time.perf_counter() - start < 1.0


def test_size_in_pillows_warning_range_is_refused_with_the_size():
    with pytest.warns(Image.DecompressionBombWarning):
        with pytest.raises(ImageInputError, match="12000x8000 pixels \\(96 megapixels\\)"):
            load_rgb_image(png_claiming_size(12000, 8000))


def test_bomb_warning_configured_as_error_is_still_a_clear_refusal():
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageInputError, match="megapixel limit"):
            load_rgb_image(png_claiming_size(12000, 8000))


def test_max_pixels_is_configurable():
    with pytest.raises(ImageInputError, match="above the 0.005 megapixel limit"):
        load_rgb_image(encode(Image.new("RGB", (100, 100))), max_pixels=5000)


# Colour modes


def test_grayscale_png_becomes_gray_rgb():
    assert load_rgb_image(encode(Image.new("L", (40, 40), 120))).getpixel((0, 0)) == (120, 120, 120)


def test_rgba_transparent_pixels_become_white_and_opaque_ones_keep_their_colour():
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    image.paste((200, 30, 30, 255), (0, 0, 20, 40))
    image.paste((0, 0, 200, 128), (20, 0, 40, 40))
    result = load_rgb_image(encode(image))
    assert result.getpixel((5, 5)) == (200, 30, 30)
    assert np.abs(np.subtract(result.getpixel((30, 5)), (127, 127, 227))).max() <= 1  # half blue over white


def test_la_transparent_pixels_become_white():
    image = Image.new("LA", (40, 40), (0, 0))
    image.paste((50, 255), (0, 0, 10, 40))
    result = load_rgb_image(encode(image))
    assert result.getpixel((2, 2)) == (50, 50, 50) and result.getpixel((30, 2)) == (255, 255, 255)


def test_palette_png_keeps_its_colours():
    image = Image.new("RGB", (40, 40), (10, 120, 200))
    image.paste((220, 40, 40), (0, 0, 20, 40))
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    result = load_rgb_image(encode(palette))
    assert result.getpixel((5, 5)) == (220, 40, 40) and result.getpixel((30, 5)) == (10, 120, 200)


def test_palette_transparency_becomes_white():
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 200, 50, 50] + [0] * 762)
    palette.paste(1, (0, 0, 20, 40))
    result = load_rgb_image(encode(palette, transparency=0))
    assert result.getpixel((5, 5)) == (200, 50, 50) and result.getpixel((30, 5)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red ink
    result = load_rgb_image(encode(cmyk, "JPEG", quality=95))
    assert result.mode == "RGB"
    assert np.abs(pixels(result)[5, 5] - (255, 0, 0)).max() <= 6


def test_16_bit_png_gradient_spans_the_full_8_bit_range():
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (40, 1))
    source = Image.fromarray(gradient)
    assert source.mode == "I;16"
    values = pixels(load_rgb_image(encode(source)))[0, :, 0]
    assert values[0] <= 1 and values[-1] >= 254
    assert (np.diff(values) >= 0).all() and len(np.unique(values)) > 200  # scaled, not clipped at 255


def test_exif_orientation_6_photo_is_rotated_upright():
    # Stored landscape with a red top-left corner; orientation 6 means "rotate 90 degrees clockwise to display".
    stored = Image.new("RGB", (80, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    result = load_rgb_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert result.size == (40, 80)
    assert pixels(result)[2, 37, 0] > 200 and pixels(result)[2, 2, 2] > 200  # red corner moved to the top-right


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert load_rgb_image(buffer.getvalue()).getpixel((5, 5)) == (255, 0, 0)


def test_constant_32_bit_image_outside_the_16_bit_range_is_black_not_an_error():
    result = load_rgb_image(encode(Image.fromarray(np.full((40, 40), 70_000, dtype=np.int32)), "TIFF"))
    assert result.mode == "RGB" and pixels(result).max() == 0


# Memory: a small file of many high-bit-depth pixels must not cost a float copy of every pixel

# Loads image_io.py alone (numpy and Pillow): the package's __init__ would import transformers for 10 s. Peak memory
# is the process's high-water mark (VmHWM; ru_maxrss would include the parent's, inherited through fork).
PEAK_MEMORY_SCRIPT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("image_io", sys.argv[1])
image_io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(image_io)
def high_water_mark():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
before = high_water_mark()
image = image_io.load_rgb_image(sys.argv[2])
print(image.size, high_water_mark() - before)
"""


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("16-bit.png", lambda: Image.fromarray(np.full((7000, 7000), 40_000, dtype=np.uint16))),
        ("float.tiff", lambda: Image.fromarray(np.full((7000, 7000), 0.5, dtype=np.float32))),
        ("rgba.png", lambda: Image.fromarray(np.full((7000, 7000, 4), 128, dtype=np.uint8))),
    ],
    ids=["16-bit PNG", "32-bit float TIFF", "RGBA PNG"],
)
def test_peak_memory_of_a_7000_square_image_stays_within_the_bytes_per_pixel_bound(tmp_path, name, image):
    path = tmp_path / name
    image().save(path, **({"compression": "tiff_deflate"} if name.endswith(".tiff") else {"compress_level": 1}))
    assert path.stat().st_size < MAX_UPLOAD_BYTES

    done = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, image_io.__file__, str(path)],
                          capture_output=True, text=True, check=True, timeout=300)
    size, peak = done.stdout.split(")")

    assert size == "(7000, 7000"
    # The decoded file plus its RGB result, and a few MB of bands (the old float copies cost 935-1130 MB here).
    assert int(peak) < MAX_DECODE_BYTES_PER_PIXEL * 7000 * 7000 + 32_000_000
