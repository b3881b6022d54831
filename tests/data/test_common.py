"""The shared file readers: one image reader for every PIL mode, scaled correctly or refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tiger.data.common import (
    CorruptFileError,
    UnsupportedImageError,
    decode_normals_png,
    image_to_rgb,
    read_rgb,
)


def test_16_bit_grey_pngs_are_scaled_not_clipped_to_white(tmp_path):
    values = np.array([[0, 257, 32768], [51400, 65280, 65535]], dtype=np.uint16)
    expected = np.array([[0, 1, 128], [200, 254, 255]], dtype=np.uint8)  # round(v / 257)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode == "I;16"
    rgb = read_rgb(tmp_path / "grey16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    # big-endian 16-bit and 32-bit mode "I" holding 16-bit values
    big = Image.frombytes("I;16B", (3, 2), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(image_to_rgb(big, "big.png")[..., 0], expected)
    as_int = Image.fromarray(values.astype(np.int32))
    assert as_int.mode == "I"
    np.testing.assert_array_equal(image_to_rgb(as_int, "int.tif")[..., 1], expected)
    # an 8-bit image stored in 16 bits (v * 257) comes back exactly
    eight = np.arange(256, dtype=np.uint16).reshape(16, 16)
    np.testing.assert_array_equal(image_to_rgb(Image.fromarray(eight * 257), "x")[..., 2], eight)


def test_8_bit_modes_convert_as_pil_does(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    rgba = Image.fromarray(np.dstack([rgb, np.full((4, 5), 7, np.uint8)]))
    np.testing.assert_array_equal(image_to_rgb(rgba, "x"), rgb)  # alpha dropped
    np.testing.assert_array_equal(image_to_rgb(Image.fromarray(grey), "x"), np.dstack([grey] * 3))
    np.testing.assert_array_equal(
        image_to_rgb(Image.fromarray(grey).convert("LA"), "x"), np.dstack([grey] * 3)
    )
    palette = Image.fromarray(rgb).quantize(8)
    np.testing.assert_array_equal(image_to_rgb(palette, "x"), np.asarray(palette.convert("RGB")))
    Image.fromarray(rgb).save(tmp_path / "x.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "x.png"), rgb)


def test_other_modes_are_refused_naming_file_and_mode(tmp_path):
    Image.fromarray(np.zeros((3, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(CorruptFileError, match=r"float.tif: unsupported PIL image mode 'F'"):
        read_rgb(tmp_path / "float.tif")
    with pytest.raises(UnsupportedImageError, match=r"cmyk.jpg: unsupported PIL image mode 'CMYK'"):
        image_to_rgb(Image.new("CMYK", (3, 3)), tmp_path / "cmyk.jpg")
    negative = Image.fromarray(np.array([[-5, 70000]], dtype=np.int32))
    with pytest.raises(UnsupportedImageError, match=r"i.tif: PIL mode 'I' with values -5..70000"):
        image_to_rgb(negative, "i.tif")


def test_normals_png_decodes_every_pixel_as_the_reference():
    """``2 * png / 255 - 1`` for every pixel (InvPT): (0, 0, 0) is (-1, -1, -1), not a marker, and no png
    value decodes to the zero-length vector the metrics ignore."""
    levels = np.arange(256, dtype=np.uint8)
    png = np.stack([levels, levels[::-1], np.zeros(256, np.uint8)], axis=-1)[None]
    normals = decode_normals_png(png)
    assert normals.dtype == np.float32 and normals.shape == (1, 256, 3)
    np.testing.assert_allclose(normals[0, :, 0], 2 * levels.astype(float) / 255 - 1, atol=1e-6)
    np.testing.assert_array_equal(normals[0, 0], [-1.0, 1.0, -1.0])
    np.testing.assert_array_equal(decode_normals_png(np.zeros((2, 2, 3), np.uint8)), -1.0)
    assert (normals[0, :, 0] != 0).all()
    with pytest.raises(ValueError, match=r"normals png must be \(H, W, 3\) uint8"):
        decode_normals_png(np.zeros((2, 2), np.uint8))
