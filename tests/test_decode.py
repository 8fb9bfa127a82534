"""decode.py: every mode to 8-bit RGB, EXIF orientation, JPEG draft, a reason for every failure."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipindex.encode.decode import DecodeError, failure_reason, load_rgb, to_rgb
from clipindex.errors import DataError


def _scene(width: int = 96, height: int = 72, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with a few flat rectangles: photo-like, JPEG-friendly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], -1)
    for _ in range(4):
        x0, y0 = rng.integers(0, width - 16), rng.integers(0, height - 16)
        img[y0:y0 + 16, x0:x0 + 16] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


def write_png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """Write a 16-bit-per-channel RGB PNG by hand (PIL cannot write one)."""
    height, width, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return _scene()


def _mad(a: Image.Image, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - b.astype(np.int16)).mean())


def test_colour_modes_decode_to_the_same_rgb(tmp_path: Path, scene: np.ndarray) -> None:
    img = Image.fromarray(scene)
    img.putalpha(255)
    img.save(tmp_path / "rgba.png")
    Image.fromarray(scene).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(scene).convert("CMYK").save(tmp_path / "cmyk.tif")
    write_png16_rgb(tmp_path / "rgb16.png", scene.astype(np.uint16) * 257)
    Image.fromarray(scene).quantize(256).save(tmp_path / "palette.png")
    for name, tolerance in [("rgba.png", 0.0), ("cmyk.tif", 0.0), ("rgb16.png", 0.0),
                            ("cmyk.jpg", 3.0), ("palette.png", 4.0)]:
        out = load_rgb(tmp_path / name)
        assert out.mode == "RGB" and out.size == (96, 72), name
        assert _mad(out, scene) <= tolerance, name


def test_sixteen_bit_grayscale_is_scaled_not_white(tmp_path: Path, scene: np.ndarray) -> None:
    gray = np.asarray(Image.fromarray(scene).convert("L"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as stored:
        assert stored.mode.startswith("I")
    out = np.asarray(load_rgb(tmp_path / "gray16.png"))
    assert out.mean() < 250  # a plain convert("RGB") clips everything to 255
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_grayscale_and_big_endian_sixteen_bit() -> None:
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    out = np.asarray(to_rgb(gray))
    assert out.shape == (16, 16, 3) and (out[..., 1] == np.asarray(gray)).all()
    big = Image.frombytes("I;16B", (2, 1), (np.array([0, 65535], ">u2")).tobytes())
    assert np.asarray(to_rgb(big))[0, :, 0].tolist() == [0, 255]
    wide = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32), mode="I")
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 128, 255]


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    out = to_rgb(rgba)
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (10, 20, 30)
    half = to_rgb(Image.new("LA", (1, 1), (0, 128)))
    assert half.getpixel((0, 0)) == (127, 127, 127)
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 0, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    out = to_rgb(palette)
    assert [out.getpixel((0, 0)), out.getpixel((1, 0))] == [(255, 255, 255), (200, 0, 0)]


def test_exif_orientation_is_applied(tmp_path: Path, scene: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to display
    Image.fromarray(scene).save(tmp_path / "rotated.png", exif=exif)
    out = load_rgb(tmp_path / "rotated.png")
    assert out.size == (72, 96)
    expected = np.asarray(Image.fromarray(scene).transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_jpeg_draft_reduces_scale_only_when_asked(tmp_path: Path) -> None:
    big = Image.fromarray(_scene(640, 480, seed=1)).resize((640, 480))
    big.save(tmp_path / "big.jpg", quality=95)
    full = load_rgb(tmp_path / "big.jpg")
    drafted = load_rgb(tmp_path / "big.jpg", target_size=32)
    assert full.size == (640, 480)
    assert min(drafted.size) >= 64 and drafted.size == (160, 120)  # 1/4 scale, not 1/8
    assert load_rgb(tmp_path / "big.jpg", target_size=224).size == (640, 480)  # 1/2 too small
    small_full = np.asarray(full.resize((43, 32), Image.Resampling.BICUBIC), dtype=np.int16)
    small_draft = np.asarray(drafted.resize((43, 32), Image.Resampling.BICUBIC), dtype=np.int16)
    assert np.abs(small_full - small_draft).mean() < 2.0


def test_bad_files_raise_decode_error_with_distinct_reasons(tmp_path: Path,
                                                            scene: np.ndarray) -> None:
    Image.fromarray(scene).save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image, just text\n")
    (tmp_path / "folder.jpg").mkdir()
    reasons = {}
    for name in ["truncated.jpg", "empty.jpg", "text.jpg", "missing.jpg", "folder.jpg"]:
        with pytest.raises(DecodeError) as info:
            load_rgb(tmp_path / name)
        assert isinstance(info.value, DataError) and name in str(info.value)
        reasons[name] = info.value.reason
    assert reasons == {
        "truncated.jpg": "truncated image file",
        "empty.jpg": "empty file",
        "text.jpg": "cannot identify image file",
        "missing.jpg": "missing file",
        "folder.jpg": "not a file",
    }


def test_decompression_bomb_is_a_decode_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2 × limit: an error
    with pytest.raises(DecodeError) as info:
        load_rgb(tmp_path / "bomb.png")
    assert info.value.reason == "decompression bomb"


def test_failure_reason_falls_back_to_type_and_message() -> None:
    assert failure_reason(ValueError("odd thing")) == "ValueError: odd thing"
    assert failure_reason(OSError("image file is truncated (3 bytes not processed)")) == (
        "truncated image file")
    assert len(failure_reason(RuntimeError("x" * 1000))) <= 160
