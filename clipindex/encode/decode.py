"""Robust image decoding: any file in, 8-bit RGB out, or a :class:`DecodeError` with a reason.

What :func:`load_rgb` does, and why:

- EXIF orientation is applied (``ImageOps.exif_transpose``): phone photos are stored
  sideways with a tag saying how to turn them.
- Every PIL mode ends as 8-bit ``RGB`` (:func:`to_rgb`): grayscale ``L``/``1`` is
  replicated; palette ``P`` is expanded; anything with transparency (``RGBA``, ``LA``,
  ``PA``, ``P``/``L``/``RGB`` with a ``transparency`` entry) is **composited on white**,
  the way a browser shows it on a page (dropping alpha would expose whatever colour the
  transparent pixels happen to hold, often black); ``CMYK``/``YCbCr`` go through PIL's
  conversion; 16-bit integer images (``I;16``, ``I;16B``, ``I;16L`` and ``I``, the modes
  PIL gives 16-bit PNG/TIFF) are scaled from 0..65535 to 0..255 (a plain ``convert``
  would clip them and a 16-bit PNG would turn white); float ``F`` images are taken as
  0..1 when their maximum is at most 1, else as 0..255.
- Truncated files raise: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set, and the pixels
  are decoded inside :func:`load_rgb` (``Image.load``), not lazily later.
- By default the whole file is decoded: the pixels open_clip's ``preprocess`` sees
  after ``Image.open(f).convert("RGB")`` (of the upright image), so a store's vectors
  are open_clip's. With ``target_size`` (the encoder's ``draft`` decoder, an explicit
  speed option), ``Image.draft`` decodes a JPEG at 1/2, 1/4 or 1/8 scale (the DCT does
  it for free) while the shorter side stays at least twice the target. That is *not*
  a full decode plus resize noise: the reduced-scale IDCT and chroma upsampling give
  other pixels than a full decode followed by the antialiased resize, and the vectors
  move with them. Measured on the 1,000 demo images against open_clip's own transform
  (README "Encoding"), the minimum cosine was 0.995 (tiny-vit), 0.998 (tiny-rn) and
  0.899 (tiny-vit-s, 48 px input: the coarsest draft scale), and 1 / 1 / 9 of the 950
  zero-shot test predictions changed.

Every failure of the file, whatever PIL or the OS raises, becomes ``DecodeError(reason)``
with a short reason (an OS fault of the machine, no descriptor left or an I/O error, is
raised as :class:`~clipindex.errors.ResourceError` instead): ``missing file``, ``empty
file``, ``cannot identify image file``, ``truncated image file``, ``decompression bomb``,
``not a file``, ``permission denied``, or ``<ExceptionType>: <message>`` for anything
else.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipindex.errors import DataError, ResourceError, os_fault

__all__ = ["DecodeError", "decode_rgb_bytes", "load_rgb", "to_rgb", "failure_reason",
           "identify"]

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_MAX_REASON = 160
#: OS errors that are the machine's (descriptor limits, a failing disk), raised as
#: :class:`~clipindex.errors.ResourceError` instead of skipping every file after them.
_MACHINE = frozenset({errno.EMFILE, errno.ENFILE, errno.EIO})


class DecodeError(DataError):
    """An image file could not be decoded; ``reason`` is a short, stable description.

    Examples
    --------
    >>> DecodeError("missing file", "a.jpg").reason
    'missing file'
    """

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{reason}")


def failure_reason(exc: BaseException) -> str:
    """Turn whatever opening or decoding an image raised into a short reason string.

    Examples
    --------
    >>> failure_reason(FileNotFoundError(2, "No such file"))
    'missing file'
    """
    if isinstance(exc, DecodeError):
        return exc.reason
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, IsADirectoryError):
        return "not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "decompression bomb"
    message = str(exc).strip()
    if "truncated" in message.lower():
        return "truncated image file"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    values = np.asarray(img).astype(np.float64)
    scaled = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _float_to_l(img: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(img, dtype=np.float64))
    scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    return Image.fromarray(np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8), mode="L")


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (see the module notes).

    Examples
    --------
    >>> from PIL import Image
    >>> to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).getpixel((0, 0))
    (255, 255, 255)
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        img = _sixteen_bit_to_l(img)
    elif img.mode == "F":
        img = _float_to_l(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _on_white(img)
    if img.mode == "RGB":
        return img
    if img.mode == "1":
        img = img.convert("L")
    return img.convert("RGB")


def _draft(img: Image.Image, target_size: int) -> None:
    """Ask a JPEG decoder for a reduced scale that keeps the shorter side ≥ 2× target."""
    if img.format != "JPEG" or target_size <= 0:
        return
    width, height = img.size
    factor = 2.0 * target_size / max(1, min(width, height))
    if factor >= 0.5:  # not even a 1/2 reduction is allowed
        return
    img.draft(img.mode, (int(np.ceil(width * factor)), int(np.ceil(height * factor))))


def _open_decoded(path: Path, target_size: int | None) -> Image.Image:
    if path.is_file() and path.stat().st_size == 0:
        raise DecodeError("empty file", path)
    with Image.open(path) as img:
        if target_size:
            _draft(img, target_size)
        img.load()
        oriented = ImageOps.exif_transpose(img)
        return to_rgb(oriented if oriented is not None else img)


def load_rgb(path: str | os.PathLike[str], *, target_size: int | None = None) -> Image.Image:
    """Decode an image file to an 8-bit RGB ``PIL.Image``, EXIF orientation applied.

    Parameters
    ----------
    path : str or path-like
        The image file.
    target_size : int, optional
        The side the image will be resized to next (the model's input size). JPEGs are
        then decoded at a reduced DCT scale where the shorter side stays ≥ 2× this:
        faster, but not the pixels of a full decode (module notes). ``None`` (default):
        a full decode.

    Raises
    ------
    DecodeError
        For any file that cannot be decoded, with ``reason`` set (module notes).

    Examples
    --------
    >>> img = load_rgb("photo.jpg")  # doctest: +SKIP
    >>> img.mode  # doctest: +SKIP
    'RGB'
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Harmless metadata complaints (corrupt EXIF, odd TIFF tags) must not reject an
            # image whose pixels decode; decompression-bomb warnings are RuntimeWarnings
            # and keep their normal treatment.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            return _open_decoded(path, target_size)
    except DecodeError:
        raise
    except OSError as exc:
        if exc.errno in _MACHINE:  # the machine's fault, not the file's: stop the run
            raise os_fault(exc, path) from exc  # type: ignore[misc]
        raise DecodeError(failure_reason(exc), path) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a skipped file
        raise DecodeError(failure_reason(exc), path) from exc


def decode_rgb_bytes(data: bytes | BaseException, *, target_size: int | None = None,
                     name: str | None = None) -> Image.Image:
    """:func:`load_rgb` for an image already in memory (a tar member, a parquet cell, an
    object read from a URL): the same modes, orientation, draft and reasons. ``data``
    may be the exception its read raised (then that is the reason); ``name`` is what the
    error names.

    Examples
    --------
    >>> decode_rgb_bytes(b"").mode
    Traceback (most recent call last):
    clipindex.encode.decode.DecodeError: empty file
    """
    try:
        if isinstance(data, OSError) and data.errno in _MACHINE:  # as load_rgb
            raise os_fault(data, name)  # type: ignore[misc]
        if isinstance(data, BaseException):
            raise data
        if not data:
            raise DecodeError("empty file", name)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with Image.open(io.BytesIO(data)) as img:
                if target_size:
                    _draft(img, target_size)
                img.load()
                oriented = ImageOps.exif_transpose(img)
                return to_rgb(oriented if oriented is not None else img)
    except (DecodeError, ResourceError):
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a skipped image
        raise DecodeError(failure_reason(exc), name) from exc


def identify(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be an image, from its header only (no pixel is decoded); None if
    PIL recognises it.

    A cheap early check (the query images of a search, before any model loads): a file
    that passes can still fail to decode later (a truncated body), with that reason.

    Examples
    --------
    >>> identify("no/such/file.jpg")
    'missing file'
    """
    path = Path(path)
    try:
        if path.is_dir():
            return "not a file"
        if path.is_file() and path.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with Image.open(path):
                return None
    except Exception as exc:  # noqa: BLE001 - any failure is a reason
        return failure_reason(exc)
