"""Pictures decoded from bytes within bounds, and the grids the report draws of them.

``open_image(data)`` opens a picture (its header only) and refuses it, before anything is
decoded, when the header claims more than ``MAX_PIXELS`` pixels or more pixels than the bytes
can hold in its format (a JPEG codes every 8x8 block of every component with at least one bit,
a PNG is deflated rows of at least one bit a pixel): a 676-byte JPEG "of" 12000 x 12000 is
refused, not decoded to a grey picture of that size. ``decode_jpeg`` decodes a sound JPEG
straight into an array with libjpeg-turbo (simplejpeg), the pixels Pillow gives, without
Pillow's per-picture overhead; whatever it does not take (another format, a refused header, a
CMYK picture, any libjpeg warning) is left to Pillow. ``decode_thumbnail`` decodes at most a
thumbnail's size (JPEGs reduced in the decoder). ``montage`` lays pictures out in a grid, a grey
placeholder for each missing one. vclust.storage.images reads the bytes.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence

log = logging.getLogger(__name__)

THUMB_SIZE = (128, 96)
TILE_SIZE = (96, 72)
PLACEHOLDER_GREY = (168, 168, 168)
MAX_PIXELS = 40_000_000  # a picture claiming more (width x height) is refused before decoding
# the fewest pixels per byte a format can carry: a JPEG codes every 8x8 block of every
# component with at least one bit (512 pixels a byte; twice that for slack), a PNG is deflated
# (at most 1032:1) rows of at least one bit a pixel (twice that for slack)
_PIXELS_PER_BYTE = {"JPEG": 1024, "PNG": 8 * 1032 * 2}


class ImageRefused(ValueError):
    """A picture refused before (or as) it is decoded: the message says why."""


_READY: list = []
_READY_LOCK = threading.Lock()


def _pillow():
    """``PIL.Image``, its format plugins imported once, by one thread (threads decoding at
    once would otherwise import them side by side: vclust.jobs.imports says why not), and its
    DecompressionBombWarning (at 89 M pixels) silenced: every picture it would warn about is
    refused by ``open_image`` first (``MAX_PIXELS`` is lower)."""
    from PIL import Image

    if not _READY:
        with _READY_LOCK:
            if not _READY:
                import warnings

                Image.init()
                warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
                _READY.append(True)
    return Image


def open_image(data: bytes):
    """``PIL.Image.open`` of ``data`` with the bounds of the module docstring checked on its
    header, before anything is decoded; raises ImageRefused (the reason) or Pillow's errors."""
    Image = _pillow()
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: a bomb
        raise ImageRefused(f"too many pixels ({exc})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise ImageRefused(f"{w}x{h} is {w * h:,} pixels, more than the {MAX_PIXELS:,} an "
                           "image may have")
    per_byte = _PIXELS_PER_BYTE.get(im.format)
    if per_byte and w * h > per_byte * len(data):
        im.close()
        raise ImageRefused(f"its header gives {w}x{h}, more pixels than its {len(data):,} "
                           f"bytes can hold ({im.format})")
    return im


def reduced_box(width: int, height: int, size: int | None) -> tuple[int, int] | None:
    """The box a picture of ``width`` x ``height`` is decoded toward when its longer side is to
    be about ``size`` (never below it): None (decoded whole) unless that side is at least twice
    ``size``, else the picture's own proportions scaled to ``size`` on its longer side."""
    longer = max(width, height)
    if not size or longer < 2 * size:
        return None
    return -(-width * size // longer), -(-height * size // longer)


def draft_scale(width: int, height: int, box: Sequence[int]) -> int:
    """The reduction (1, 2, 4 or 8) Pillow's ``Image.draft(mode, box)`` decodes a JPEG of
    ``width`` x ``height`` at: the largest that keeps both sides at least ``box``."""
    fits = min(width // max(int(box[0]), 1), height // max(int(box[1]), 1))
    return next(s for s in (8, 4, 2, 1) if fits >= s or s == 1)


_JPEG_COLOURS = ("YCbCr", "Gray")  # what libjpeg turns into RGB as Pillow does (not CMYK, YCCK)


def decode_jpeg(data: bytes, size: int | None = None):
    """A JPEG decoded into an array by libjpeg-turbo (simplejpeg): (width, height, pixels) with
    pixels (h, w, 4) uint8 RGBX, the fourth value 255 everywhere, reduced in the decoder's DCT
    as Pillow's draft mode reduces it toward ``reduced_box(width, height, size)``; or None
    where Pillow is to decide instead (``open_image``): not a JPEG, a header it refuses or
    cannot read, a colour space other than YCbCr or grey, or any error or warning of libjpeg (a
    cut-short or corrupt file: Pillow decodes what it can or raises, as it did before this
    decoder).

    The RGB values are Pillow's, value for value (the same library at the same settings:
    accurate DCT, smooth chroma upsampling, the same reduction; tests/test_pixels.py compares
    them), without Pillow's per-picture costs (its headers parsed in Python, the pixels copied
    into and out of its image memory)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    import simplejpeg

    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
        if (colour not in _JPEG_COLOURS or width * height > MAX_PIXELS
                or width * height > _PIXELS_PER_BYTE["JPEG"] * len(data)):
            return None
        box = reduced_box(width, height, size)
        scale = draft_scale(width, height, box) if box else 1
        want = (-(-height // scale), -(-width // scale))
        pixels = simplejpeg.decode_jpeg(data, "RGBX", min_height=want[0], min_width=want[1],
                                        min_factor=scale, strict=True)
    except Exception:  # noqa: BLE001 - libjpeg's errors and (strict) warnings: Pillow decides
        return None
    if pixels.shape[:2] != want:  # another reduction than Pillow's: let Pillow decode it
        return None
    return width, height, pixels


def decode_thumbnail(data: bytes, size: Sequence[int] = THUMB_SIZE):
    """Decode image bytes to an RGB picture of at most ``size``, or None if undecodable.

    JPEGs are decoded at a reduced scale (``Image.draft``: 1/2, 1/4 or 1/8, never below
    ``size``), which is most of the cost saved on large images. Pictures refused by
    ``open_image`` (too many pixels, a header its bytes cannot hold) are None too.

    Parameters
    ----------
    data : bytes
    size : (int, int)

    Returns
    -------
    PIL.Image.Image or None
    """
    return decode_with_reason(data, size)[0]


def decode_with_reason(data: bytes, size):
    """(picture or None, why it is None)."""
    size = (int(size[0]), int(size[1]))
    try:
        with open_image(data) as im:
            im.draft("RGB", size)
            out = im.convert("RGB")  # decodes: a truncated file raises here
        out.thumbnail(size)
        return out, ""
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on garbage; never propagate
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        return None, why


# --------------------------------------------------------------------------- montage


def placeholder(size: Sequence[int] = TILE_SIZE):
    """The grey tile that stands for a missing picture: grey with a faint diagonal cross."""
    from PIL import Image, ImageDraw

    w, h = int(size[0]), int(size[1])
    tile = Image.new("RGB", (w, h), PLACEHOLDER_GREY)
    d = ImageDraw.Draw(tile)
    line = tuple(c - 24 for c in PLACEHOLDER_GREY)
    d.line([(0, 0), (w - 1, h - 1)], fill=line)
    d.line([(0, h - 1), (w - 1, 0)], fill=line)
    return tile


def montage(images_or_none: Sequence, cols: int, size: Sequence[int] = TILE_SIZE, *,
            gap: int = 2, background=(255, 255, 255)):
    """A grid picture of images, row by row, with a grey placeholder tile for each None.

    Parameters
    ----------
    images_or_none : sequence of PIL.Image.Image or None
    cols : int
        Tiles per row (at least 1).
    size : (int, int)
        Tile width and height; each image is scaled to fit its tile (aspect kept, centred).
    gap : int
        Pixels of ``background`` between and around the tiles.
    background : RGB tuple

    Returns
    -------
    PIL.Image.Image
        RGB, ``cols * (w + gap) + gap`` wide and ``rows * (h + gap) + gap`` high, with
        ``rows = ceil(len(images) / cols)`` (at least one row).
    """
    from PIL import Image, ImageOps

    cols = max(1, int(cols))
    w, h = int(size[0]), int(size[1])
    items = list(images_or_none)
    rows = max(1, -(-len(items) // cols))
    sheet = Image.new("RGB", (cols * (w + gap) + gap, rows * (h + gap) + gap), background)
    empty = placeholder((w, h))
    for i, img in enumerate(items):
        x, y = gap + (i % cols) * (w + gap), gap + (i // cols) * (h + gap)
        if img is None:
            sheet.paste(empty, (x, y))
            continue
        fitted = ImageOps.contain(img.convert("RGB"), (w, h))
        sheet.paste(fitted, (x + (w - fitted.width) // 2, y + (h - fitted.height) // 2))
    return sheet
