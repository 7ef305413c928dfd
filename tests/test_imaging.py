"""Image decoding: formats by content, conversions, and plain reasons for bad input."""

import io

import numpy as np
import pytest
from PIL import Image

from conftest import image_bytes
from hematovision.imaging.decode import ImageError, decode_image, resize_for_model, sniff_format
from hematovision.imaging.limits import ImageLimits


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_supported_formats_decode_to_rgb(fmt):
    d = decode_image(image_bytes(fmt, size=(64, 48)))
    assert d.rgb.shape == (48, 64, 3) and d.rgb.dtype == np.uint8
    assert d.format == fmt


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK"])
def test_modes_convert_to_rgb(mode):
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    d = decode_image(image_bytes(fmt, mode=mode))
    assert d.rgb.shape[2] == 3 and d.rgb.dtype == np.uint8
    assert d.rgb.max() > 100  # not collapsed to black


def test_16_bit_grey_is_scaled_to_8_bit():
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    rgb = decode_image(buf.getvalue()).rgb
    assert rgb.shape == (48, 64, 3) and rgb.min() == 0 and rgb.max() == 255


def test_format_is_identified_by_content_not_name():
    assert sniff_format(image_bytes("PNG")) == "PNG"
    assert sniff_format(b"GIF89a....") is None


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, I am a text file", "not a supported image"),
        (image_bytes("JPEG")[:200], "corrupt or truncated"),
        (image_bytes("PNG", size=(20, 20)), "too small"),
    ],
)
def test_bad_inputs_raise_plain_reasons(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)


def test_pixel_limit_is_checked_from_the_header():
    with pytest.raises(ImageError, match="too large"):
        decode_image(image_bytes("PNG", size=(400, 400)), ImageLimits(max_pixels=100_000))


def test_exif_orientation_is_applied():
    img = Image.fromarray(np.zeros((40, 80, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue()).rgb.shape[:2] == (80, 40)


def test_resize_for_model_is_square():
    assert resize_for_model(np.zeros((240, 320, 3), np.uint8), 64).shape == (64, 64, 3)


def test_plain_jpeg_fast_path_matches_pillow_exactly_and_exif_rotation_still_applies():
    import io

    from PIL import Image, ImageOps

    from hematovision.imaging.decode import decode_image

    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(decode_image(buf.getvalue()).rgb, ref)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rot = io.BytesIO()
    img.save(rot, format="JPEG", quality=85, exif=exif)
    out = decode_image(rot.getvalue()).rgb
    assert out.shape == (64, 48, 3)
    assert np.array_equal(
        out, np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(rot.getvalue()))).convert("RGB"))
    )
