"""Pictures for the synthetic case: one small JPEG per row, drawn from what the row plants.

A person reads a cluster of the synthetic case from its images alone, as on the real delivery:

    body type   the silhouette, seen three-quarter on: the face (front or rear) on the left, the
                side going away to the right. A bus is long and tall with a band of windows, a
                truck a cab and a taller box, a pickup a cab and an open bed, a van tall and
                boxy, an SUV tall, a sedan low with a boot, a hatchback short with a steep
                hatch, "other" a small three-wheeler with a canopy
    view        front: two warm white headlights, a grille and a windscreen; rear: two red tail
                lights and a rear window (a truck's box shows its doors)
    colour      the paint, the named colour plainly; the side a shade darker than the face
    vehicle     one of four details kept by each vehicle in all its images: none, a roof rack,
                a side stripe, a black lower skirt
    outliers    glare: the frame blown out white, a ghost of the vehicle; empty: the road alone;
                junk: a bad crop (a sliver of a vehicle stretched to the frame) or noise

on a neutral grey road scene. Each (type, view, colour, detail) has ``N_JITTER`` variants (scene:
wall and road shade, horizon, lane marks; vehicle size; position; brightness; sensor grain): a row
draws one from a seeded stream, so images are not all identical. Vehicles are drawn once per
(type, view, colour, detail, size) as anti-aliased sprites and pasted; each variant is
JPEG-encoded once per writer and its bytes reused, which keeps writing fast (see
``CaseImageWriter``).

The zip holds one entry per row, stored (JPEGs do not compress), named like the row's id with
forward slashes: ``veriwild/12/00034/000001.jpg``. Entries carry a fixed date, so the zip's bytes
depend on the seed and the row count only.
"""

from __future__ import annotations

import io
import logging
import os
import random
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SIZE = (128, 96)  # width, height
N_JITTER = 8  # variants per (type, view, colour, detail): scene, size, position, brightness
N_DETAIL = 4  # none, roof rack, side stripe, black skirt
JPEG_QUALITY = 85
ZIP_DATE = (2020, 1, 1, 0, 0, 0)
_SS = 2  # drawn at twice the size, then reduced: smooth edges

PAINT = {
    "white": (236, 236, 232), "black": (30, 30, 33), "grey": (120, 122, 124),
    "silver": (190, 194, 200), "red": (200, 26, 28), "blue": (30, 70, 190),
    "brown": (112, 70, 38), "yellow": (240, 198, 28), "green": (30, 138, 58),
    "orange": (240, 122, 24),
}
GLASS = (56, 68, 84)
GLASS_GLINT = (112, 126, 142)
HEADLIGHT = (255, 246, 196)
HEADLIGHT_CORE = (255, 255, 240)
TAIL_LIGHT = (236, 18, 20)
TYRE = (26, 26, 28)
HUB = (128, 130, 134)

# Silhouettes in pixels of the 128x96 frame (scaled by each variant's size). w: face width;
# length: side length; clear: ground clearance; front/rear: (top of the lower face, top of the
# face); profile: the side's top outline from the front (u, height); windows: side window
# polygons (u, height) from the front; wheels: u of each wheel from the front, radius.
SHAPES = {
    "sedan": dict(w=38, length=54, clear=4, front=(15, 29), rear=(19, 29),
                  profile=[(0, 15), (14, 18), (22, 29), (38, 29), (46, 19), (54, 18)],
                  windows=[[(17, 19), (23, 27), (37, 27), (43, 19)]], wheels=([10, 45], 6.0)),
    "hatchback": dict(w=35, length=40, clear=4, front=(15, 29), rear=(16, 29),
                      profile=[(0, 15), (10, 18), (17, 29), (34, 29), (40, 16)],
                      windows=[[(13, 19), (18, 27), (33, 27), (37, 19)]], wheels=([8, 33], 6.0)),
    "suv": dict(w=40, length=54, clear=6, front=(22, 41), rear=(24, 41),
                profile=[(0, 22), (11, 25), (18, 41), (50, 41), (54, 37), (54, 24)],
                windows=[[(15, 27), (19, 39), (49, 39), (52, 27)]], wheels=([11, 44], 7.5)),
    "van": dict(w=40, length=60, clear=5, front=(22, 51), rear=(37, 51),
                profile=[(0, 22), (5, 26), (14, 51), (60, 51), (60, 24)],
                windows=[[(10, 30), (15, 48), (25, 48), (25, 30)]], wheels=([11, 50], 7.0)),
    "pickup": dict(w=40, length=64, clear=6, front=(24, 41), rear=(24, 41),
                   profile=[(0, 24), (12, 27), (19, 41), (34, 41), (34, 25), (64, 25), (64, 24)],
                   windows=[[(16, 28), (20, 39), (32, 39), (32, 28)]], wheels=([11, 52], 7.5),
                   bed=(35, 63)),
    "truck": dict(w=40, length=78, clear=8, front=(30, 50), rear=(10, 64),
                  profile=[(0, 30), (3, 50), (22, 50), (22, 64), (78, 64), (78, 12)],
                  windows=[[(4, 34), (6, 47), (19, 47), (19, 34)]], wheels=([10, 52, 64], 8.0),
                  box=(23, 78, 64)),
    "bus": dict(w=40, length=80, clear=6, front=(16, 66), rear=(36, 66),
                profile=[(0, 64), (2, 66), (78, 66), (80, 64)],
                windows=[[(3 + 11 * i, 40), (3 + 11 * i, 60), (12 + 11 * i, 60), (12 + 11 * i, 40)]
                         for i in range(7)], wheels=([15, 65], 8.0)),
    "other": dict(w=26, length=30, clear=4, front=(13, 40), rear=(13, 40),
                  profile=[(0, 13), (3, 36), (8, 40), (26, 40), (30, 34), (30, 13)],
                  windows=[[(5, 22), (8, 36), (24, 36), (27, 22)]], wheels=([24], 6.0)),
}


def _shade(rgb, f):
    return tuple(int(max(0, min(255, c * f))) for c in rgb)


def _variant_rng(*key) -> np.random.Generator:
    """A stream that depends on the key only (not on the order variants are first drawn)."""
    text = "|".join(str(k) for k in key).encode()
    return np.random.default_rng([zlib.crc32(text), len(text), 7])


# --------------------------------------------------------------------------- drawing


@lru_cache(maxsize=256)
def _scene(jitter: int, w: int, h: int):
    """A road scene as an RGB picture and its ground line's y; one per jitter."""
    from PIL import Image

    rng = _variant_rng("scene", jitter, w, h)
    horizon = h * (0.34 + rng.uniform(-0.04, 0.04))
    wall = rng.uniform(138, 176)
    road = rng.uniform(70, 98)
    y = np.arange(h, dtype=np.float32)[:, None]
    grey = np.where(y < horizon, wall - 10 * (y / horizon),  # a wall, darker towards the road
                    road + 10 * (1 - (y - horizon) / (h - horizon)))  # haze on the far road
    grey = np.where(np.abs(y - horizon) < 1.2, 192.0, grey)  # the kerb
    img = np.repeat(np.broadcast_to(grey, (h, w))[:, :, None], 3, axis=2).astype(np.float32)
    lane_y = int(horizon + (h - horizon) * 0.35)
    offset = int(rng.integers(0, 24))
    for x in range(-offset, w, 24):  # far lane dashes, behind the vehicle
        img[lane_y:lane_y + 2, max(0, x):max(0, x + 11)] = 206.0
    return Image.fromarray(img.astype(np.uint8)), h * 0.92 + rng.uniform(-2, 3)


@lru_cache(maxsize=64)
def _grain(i: int, w: int, h: int) -> np.ndarray:
    """Sensor grain, float32 (h, w, 3): mostly grey, a little per channel."""
    rng = _variant_rng("noise", i, w, h)
    out = (rng.normal(0, 2.5, (h, w, 1)) + rng.normal(0, 1.0, (h, w, 3))).astype(np.float32)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=64)
def _flare(i: int, w: int, h: int) -> np.ndarray:
    """A soft bright blob, float32 (h, w, 1), for glare."""
    rng = _variant_rng("flare", i, w, h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.1, 0.5) * h
    out = (40 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.35 * w) ** 2)))[:, :, None]
    out.setflags(write=False)
    return out


class _Vehicle:
    """One vehicle drawn with ``PIL.ImageDraw`` in frame coordinates: positions in pixels of a
    128x96 frame (``x0`` the face's left edge, ``ground`` the ground line's y, ``s`` the
    vehicle's size), drawn on a canvas ``kx`` by ``ky`` times as large."""

    def __init__(self, draw, spec, view, paint, x0, ground, s, kx, ky):
        self.draw, self.spec, self.paint, self.s = draw, spec, paint, s
        self.rear = view == "rear"
        self.ground, self.kx, self.ky = ground, kx, ky
        self.clr = spec["clear"]
        self.fx0, self.fx1 = x0, x0 + spec["w"] * s
        self.side_col = _shade(paint, 0.78)
        self.edge = (92, 92, 98) if max(paint) < 60 else _shade(paint, 0.45)

    def P(self, x, hgt):  # frame x, height above ground (in unscaled pixels) -> canvas point
        return (x * self.kx, (self.ground - hgt * self.s) * self.ky)

    def U(self, u):  # side position from the front -> frame x
        return self.fx1 + (self.spec["length"] - u if self.rear else u) * self.s

    def poly(self, pts, fill, outline=None):
        self.draw.polygon([self.P(x, hh) for x, hh in pts], fill=fill, outline=outline)

    def line(self, a, b, fill, width=_SS):
        self.draw.line([self.P(*a), self.P(*b)], fill=fill, width=width)

    def side(self):
        """The shadow, a truck's box over its cab, the side with its windows and bed."""
        spec, s, fx0, fx1, clr, U = self.spec, self.s, self.fx0, self.fx1, self.clr, self.U
        self.draw.ellipse([self.P(fx0 - 3, 2.5), self.P(fx1 + spec["length"] * s + 4, -2.5)],
                          fill=(40, 40, 42))
        if "box" in spec and not self.rear:  # the box of a truck, seen above its cab
            bw = spec["box"][2]
            self.poly([(fx0 + 3 * s, 46), (fx1 + 6 * s, 46), (fx1 + 6 * s, bw), (fx0 + 3 * s, bw)],
                      _shade(self.paint, 0.9), self.edge)
        prof = [(U(u), hgt) for u, hgt in spec["profile"]]
        self.poly([(U(0), clr)] + prof + [(U(spec["length"]), clr)], self.side_col, self.edge)
        if "box" in spec:  # the cab's back shows against the box
            u0 = spec["box"][0]
            self.line((U(u0), clr + 2), (U(u0), spec["box"][2] - 1), self.edge)
        for win in spec["windows"]:
            self.poly([(U(u), hgt) for u, hgt in win], GLASS, _shade(GLASS, 0.6))
        if "bed" in spec:  # the open bed: its inside seen over the near wall
            b0, b1 = spec["bed"]
            top = spec["profile"][-2][1]
            self.poly([(U(b0), top), (U(b1), top), (U(b1) + 2 * s, top + 5),
                       (U(b0) + 2 * s, top + 5)], (44, 44, 46), self.edge)
            self.line((U(b0) + 2 * s, top + 5), (U(b1) + 2 * s, top + 5), self.side_col)

    def side_detail(self, detail):
        """The vehicle's own detail on its side: roof rack, stripe or skirt."""
        spec, clr, U = self.spec, self.clr, self.U
        body_top = max(hgt for _, hgt in spec["profile"])
        if detail == 1:  # a roof rack
            self.line((U(spec["length"] * 0.35), body_top + 2.5),
                      (U(spec["length"] * 0.8), body_top + 2.5), (20, 20, 20), 2 * _SS)
        elif detail == 2:  # a side stripe
            stripe = (20, 20, 20) if sum(self.paint) > 360 else (235, 235, 235)
            hs = clr + (spec["front"][0] - clr) * 0.75
            self.line((U(2), hs), (U(spec["length"] - 2), hs), stripe, 2 * _SS)
        elif detail == 3:  # a black skirt along the bottom
            self.poly([(U(0), clr), (U(0), clr + 4), (U(spec["length"]), clr + 4),
                       (U(spec["length"]), clr)], (24, 24, 24))

    def wheels(self):
        us, r = self.spec["wheels"]
        s, P = self.s, self.P
        for u in us:
            cx, cy = self.U(u), r
            self.draw.ellipse([P(cx - r * s, cy + r), P(cx + r * s, cy - r)], fill=TYRE)
            self.draw.ellipse([P(cx - r * s * 0.45, cy + r * 0.45),
                               P(cx + r * s * 0.45, cy - r * 0.45)], fill=HUB)

    def face(self, detail):
        """The front or the rear; returns (face_lo, lights_at): where the face's lower part
        ends and the lights sit."""
        spec, s, fx0, fx1, clr = self.spec, self.s, self.fx0, self.fx1, self.clr
        lo, hi = spec["rear" if self.rear else "front"]
        if "box" in spec and self.rear:  # a truck's box from behind: two doors, lights low
            self.poly([(fx0, clr), (fx1 + 4 * s, clr), (fx1 + 4 * s, hi), (fx0, hi)],
                      self.paint, self.edge)
            mid = (fx0 + fx1 + 4 * s) / 2
            self.line((mid, clr + 1), (mid, hi - 1), self.edge)
            return hi, clr + 1.5
        for tx in (fx0 + 1 * s, fx1 - 6 * s):  # tyres under the face
            self.poly([(tx, 0), (tx + 5 * s, 0), (tx + 5 * s, clr + 3), (tx, clr + 3)], TYRE)
        self.poly([(fx0, clr), (fx1, clr), (fx1, lo), (fx0, lo)], self.paint, self.edge)
        if hi > lo:
            self.upper_face(lo, hi)
        if detail == 1:
            self.line((fx0 + 4 * s, hi + 2.5), (fx1 - 4 * s, hi + 2.5), (20, 20, 20), 2 * _SS)
        if detail == 3:
            self.poly([(fx0, clr), (fx1, clr), (fx1, clr + 4), (fx0, clr + 4)], (24, 24, 24))
        return lo, lo - 2 - min(6.0, (lo - clr) * 0.4)

    def upper_face(self, lo, hi):
        """The upper face: pillars, then the glass (a pickup's cab back over its bed)."""
        spec, s, fx0, fx1, paint = self.spec, self.s, self.fx0, self.fx1, self.paint
        inset = 3 * s if spec is not SHAPES["bus"] else 0.5 * s
        if "bed" in spec and self.rear:
            self.poly([(fx0 + 3 * s, lo), (fx1 - 3 * s, lo), (fx1 - 3 * s, lo + 4),
                       (fx0 + 3 * s, lo + 4)], (44, 44, 46))
            self.poly([(fx0 + 5 * s, lo + 4), (fx1 - 5 * s, lo + 4), (fx1 - 5 * s, hi),
                       (fx0 + 5 * s, hi)], paint, self.edge)
            self.poly([(fx0 + 10 * s, lo + 9), (fx1 - 10 * s, lo + 9), (fx1 - 10 * s, hi - 3),
                       (fx0 + 10 * s, hi - 3)], GLASS)
            return
        self.poly([(fx0 + 0.5 * s, lo), (fx1 - 0.5 * s, lo), (fx1 - inset, hi),
                   (fx0 + inset, hi)], paint, self.edge)
        g = [(fx0 + 2.5 * s, lo + 1), (fx1 - 2.5 * s, lo + 1),
             (fx1 - inset - 1.5 * s, hi - 2), (fx0 + inset + 1.5 * s, hi - 2)]
        if self.rear and spec is SHAPES["bus"]:  # a bus's small rear window
            g = [(fx0 + 4 * s, lo + 4), (fx1 - 4 * s, lo + 4), (fx1 - 4 * s, hi - 8),
                 (fx0 + 4 * s, hi - 8)]
        self.poly(g, GLASS)
        gx = fx0 + (fx1 - fx0) * 0.3
        self.line((gx, lo + 2), (gx + 4 * s, hi - 3), GLASS_GLINT, 2 * _SS)

    def lights(self, face_lo, lights_at):
        """Lights, grille and plate."""
        spec, s, fx0, clr, P, draw = self.spec, self.s, self.fx0, self.clr, self.P, self.draw
        fr = self.fx1 + (4 * s if "box" in spec and self.rear else 0)
        lw = max(4.0, (fr - fx0) * 0.2)
        lh = 4.0 if not self.rear else 4.5
        px = (fx0 + fr) / 2
        if not self.rear:
            draw.rectangle([P(fx0 + lw + 2 * s, lights_at + lh - 0.5), P(fr - lw - 2 * s,
                            lights_at - 0.5)], fill=(34, 34, 38))  # grille
            for lx in (fx0 + 1.5 * s, fr - 1.5 * s - lw):
                draw.ellipse([P(lx - 0.5, lights_at + lh + 0.5),
                              P(lx + lw + 0.5, lights_at - 0.5)], fill=(70, 64, 40))
                draw.ellipse([P(lx, lights_at + lh), P(lx + lw, lights_at)], fill=HEADLIGHT)
                draw.ellipse([P(lx + lw * 0.3, lights_at + lh * 0.75),
                              P(lx + lw * 0.7, lights_at + lh * 0.25)], fill=HEADLIGHT_CORE)
        else:
            for lx in (fx0 + 1.5 * s, fr - 1.5 * s - lw):
                draw.rectangle([P(lx - 0.6, lights_at + lh + 0.6),
                                P(lx + lw + 0.6, lights_at - 0.6)], fill=(48, 0, 0))
                draw.rectangle([P(lx, lights_at + lh), P(lx + lw, lights_at)], fill=TAIL_LIGHT)
        if face_lo - clr > 8:
            draw.rectangle([P(px - 5 * s, clr + 5.5), P(px + 5 * s, clr + 2.5)],
                           fill=(232, 232, 228))


def _draw_vehicle(draw, spec: dict, view: str, paint, detail: int, x0: float, ground: float,
                  s: float, kx: float, ky: float):
    """Draw one vehicle (``_Vehicle``): side, its detail, wheels, face, lights."""
    v = _Vehicle(draw, spec, view, paint, x0, ground, s, kx, ky)
    v.side()
    v.side_detail(detail)
    v.wheels()
    v.lights(*v.face(detail))


N_SIZES = 3  # vehicle sizes: each picture's is its jitter modulo N_SIZES
_GROUND = 88.0  # where sprites stand, in a 128x96 frame


@lru_cache(maxsize=4096)
def _sprite(body_type: str, view: str, colour: str, detail: int, size_step: int, w: int, h: int):
    """A vehicle on a transparent background (RGBA, cropped to it), and the x and y of its
    top-left corner in the frame when it stands on ``_GROUND``, centred."""
    from PIL import Image, ImageDraw

    spec = SHAPES.get(body_type, SHAPES["other"])
    units = spec["w"] + spec["length"] + (4 if "box" in spec else 0)
    s = min(0.95 + 0.07 * size_step, 124 / units)
    x0 = (128 - units * s) / 2
    sx, sy = w / 128.0, h / 96.0
    canvas = Image.new("RGBA", (w * _SS, h * _SS), (0, 0, 0, 0))
    # drawn in 128x96 units, stretched to the frame
    _draw_vehicle(ImageDraw.Draw(canvas), spec, view, PAINT.get(colour, PAINT["grey"]),
                  int(detail) % N_DETAIL, x0, _GROUND, s, sx * _SS, sy * _SS)
    x0, y0, x1, y1 = canvas.getbbox()
    x0, y0 = x0 // _SS, y0 // _SS
    x1, y1 = min(w, -(-x1 // _SS)), min(h, -(-y1 // _SS))
    layer = canvas.crop((x0 * _SS, y0 * _SS, x1 * _SS, y1 * _SS)).reduce(_SS)
    return layer, x0, y0


def render(body_type: str, view: str, colour: str, outlier_kind: str = "", *, jitter: int = 0,
           detail: int = 0, size=IMAGE_SIZE):
    """One picture of the synthetic case.

    Parameters
    ----------
    body_type : str
        One of ``SHAPES`` (sedan suv hatchback van pickup truck bus other).
    view : {"front", "rear"}
    colour : str
        One of ``PAINT``.
    outlier_kind : {"", "glare", "empty", "junk"}
        "" for an inlier.
    jitter : int
        Which variant (scene, vehicle size, position, brightness, grain); the same arguments
        give the same picture.
    detail : int
        The vehicle's own detail, ``0 .. N_DETAIL - 1``.
    size : (int, int)
        Width and height.

    Returns
    -------
    PIL.Image.Image
        RGB.
    """
    from PIL import Image

    w, h = int(size[0]), int(size[1])
    jitter = int(jitter)
    # scalar draws from the stdlib generator: a numpy Generator costs more than the drawing
    key = "|".join(map(str, (body_type, view, colour, outlier_kind, jitter, int(detail), w, h)))
    rnd = random.Random(zlib.crc32(key.encode()))
    if outlier_kind == "junk" and jitter % 3 == 0:  # noise: blocks of random colour, grain
        rng = np.random.default_rng(rnd.getrandbits(64))
        blocks = rng.uniform(0, 255, (-(-h // 8), -(-w // 8), 3))
        img = np.kron(blocks, np.ones((8, 8, 1)))[:h, :w]
        img = 0.6 * img + 0.4 * rng.uniform(0, 255, (h, w, 3))
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    background, ground = _scene(jitter, w, h)
    canvas = background.copy()
    vx0, vx1 = 0, w
    if outlier_kind != "empty":
        sprite, left, top = _sprite(body_type, view, colour, int(detail), jitter % N_SIZES, w, h)
        x = left + round(rnd.uniform(-6, 6) * w / 128)
        y = top + round(ground - _GROUND * h / 96)
        canvas.paste(sprite, (x, y), sprite)
        vx0, vx1 = max(0, x), min(w, x + sprite.width)
    if outlier_kind == "junk":  # a bad crop: a sliver of the vehicle stretched to the frame
        if jitter % 3 == 1:  # a column a few pixels wide
            x = rnd.randrange(vx0, max(vx0 + 1, vx1 - 8))
            part = (x, 0, x + rnd.randrange(3, 8), h)
        else:  # a small corner of it, blown up
            gy = int(ground - 8 * h / 96)
            y = rnd.randrange(max(0, gy - int(20 * h / 96)), max(1, gy))
            x = rnd.randrange(vx0, max(vx0 + 1, vx1 - 14))
            part = (x, y, x + 12, y + 8)
        canvas = canvas.crop(part).resize((w, h), Image.Resampling.BILINEAR)
    scene = np.asarray(canvas, dtype=np.float32)
    scene = scene * np.float32(rnd.uniform(0.88, 1.1)) + _grain(rnd.randrange(8), w, h)
    if outlier_kind == "glare":  # overexposed: contrast crushed towards white, a flare
        scene = (255 - (255 - scene) * np.float32(rnd.uniform(0.1, 0.16))
                 + _flare(rnd.randrange(8), w, h))
    return Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- the case's zip


def vehicle_detail(vehicle_id) -> np.ndarray:
    """Each vehicle's own detail (``0 .. N_DETAIL - 1``), the same in all its images."""
    v = np.asarray(vehicle_id, dtype=np.uint64)
    return ((v * np.uint64(2654435761)) % np.uint64(1 << 32) >> np.uint64(16)) % N_DETAIL


class _StoredZip:
    """A zip of stored entries written in one pass: a local header, the name and the bytes per
    entry, the central directory at the end (zip64 records when past the classic limits).

    ``zipfile.ZipFile.writestr`` costs about 25 us of CPU an entry (it seeks back to patch each
    header); this costs about 3, and the entries are most of the work of a 416k-row case once
    its pictures are cached.
    """

    _DOS_TIME = 0
    _DOS_DATE = (ZIP_DATE[0] - 1980) << 9 | ZIP_DATE[1] << 5 | ZIP_DATE[2]
    _LOCAL = struct.Struct("<IHHHHHIIIHH")
    _CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")

    def __init__(self, path: Path):
        self._f = open(path, "wb", buffering=1 << 20)
        self._cd = io.BytesIO()
        self._n = 0
        self._pos = 0

    def add(self, name: str, data: bytes, crc: int) -> None:
        raw = name.encode("utf-8")
        flags = 0 if raw.isascii() else 0x800
        size = len(data)
        self._f.write(self._LOCAL.pack(0x04034B50, 20, flags, 0, self._DOS_TIME, self._DOS_DATE,
                                       crc, size, size, len(raw), 0))
        self._f.write(raw)
        self._f.write(data)
        offset, extra = self._pos, b""
        if offset >= 0xFFFFFFFF:  # past 4 GB: the offset goes in a zip64 extra field
            offset, extra = 0xFFFFFFFF, struct.pack("<HHQ", 1, 8, offset)
        version = 45 if extra else 20
        self._cd.write(self._CENTRAL.pack(0x02014B50, 3 << 8 | version, version, flags, 0,
                                          self._DOS_TIME, self._DOS_DATE, crc, size, size,
                                          len(raw), len(extra), 0, 0, 0, 0o100644 << 16, offset))
        self._cd.write(raw)
        self._cd.write(extra)
        self._pos += 30 + len(raw) + size
        self._n += 1

    def close(self) -> None:
        f, n = self._f, self._n
        cd = self._cd.getvalue()
        start, size = self._pos, len(cd)
        f.write(cd)
        if n >= 0xFFFF or start >= 0xFFFFFFFF or size >= 0xFFFFFFFF:
            f.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, size, start))
            f.write(struct.pack("<IIQI", 0x07064B50, 0, start + size, 1))
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                            min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF), 0))
        f.close()

    def discard(self) -> None:
        self._f.close()


class CaseImageWriter:
    """Write the synthetic case's images into a zip, block by block, as the rows are made.

    Parameters
    ----------
    path : str or path-like
        The zip to write (``OUT_DIR/veriwild.zip``). It is written as ``<path>.partial`` and
        renamed when ``close`` is called, so a zip under ``path`` is always complete.
    seed : int
        The case's seed: with the block number it seeds each row's choice of variant.
    size : (int, int)
        Width and height of every picture.
    quality : int
        JPEG quality.

    Notes
    -----
    Each distinct picture (type, view, colour, detail, variant; outliers by kind) is drawn and
    encoded once, then its bytes are reused: at most 8 x 2 x 10 x ``N_DETAIL`` x ``N_JITTER``
    = 5,120 inlier pictures, 2 x 1,280 glare and junk ones and 8 empty ones, about 3.3 kB each
    (under 26 MB), so memory stays bounded whatever the row count; the central directory adds
    about 75 bytes a row. Entries are stored, not compressed, with a fixed date.
    Its cost: benchmarks/RESULTS.md, figures behind the code.
    """

    def __init__(self, path, seed: int, *, size=IMAGE_SIZE, quality: int = JPEG_QUALITY):
        self.path = Path(path)
        self.seed = int(seed)
        self.size = (int(size[0]), int(size[1]))
        self.quality = int(quality)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._zip = _StoredZip(self._tmp)
        self._cache: dict = {}
        self.rows = 0
        self.bytes = 0

    def picture(self, body_type: str, view: str, colour: str, outlier_kind: str, jitter: int,
                detail: int) -> tuple[bytes, int]:
        """The JPEG bytes of one picture and their CRC-32 (drawn and encoded on first use)."""
        if outlier_kind == "empty":
            key = ("", "", "", "empty", jitter, 0)
        elif outlier_kind:
            key = (body_type, view, colour, outlier_kind, jitter, 0)
        else:
            key = (body_type, view, colour, "", jitter, detail)
        data = self._cache.get(key)
        if data is None:
            buf = io.BytesIO()
            render(*key[:4], jitter=key[4], detail=key[5], size=self.size).save(
                buf, "JPEG", quality=self.quality)
            data = self._cache[key] = (buf.getvalue(), zlib.crc32(buf.getvalue()))
        return data

    def add_block(self, ids, attrs: dict, block: int) -> None:
        """Write the pictures of one block of rows.

        Parameters
        ----------
        ids : sequence of str
            The rows' ids with forward slashes: the entry names.
        attrs : dict
            The block's attributes as ``synth._block`` returns them: arrays ``body_type``,
            ``view``, ``colour``, ``vehicle_id``, ``outlier_kind``.
        block : int
            The block's number (seeds the rows' variants).
        """
        n = len(ids)
        rng = np.random.default_rng([self.seed, 3, int(block)])
        columns = zip(ids, *(np.asarray(attrs[k]).tolist() for k in
                             ("body_type", "view", "colour", "outlier_kind")),
                      rng.integers(0, N_JITTER, n).tolist(),
                      vehicle_detail(attrs["vehicle_id"]).tolist())
        cache, add = self._cache, self._zip.add
        for name, body, view, colour, kind, jitter, detail in columns:
            kind = kind or ""
            if kind == "empty":
                key = ("", "", "", "empty", jitter, 0)
            else:
                key = (body, view, colour, kind, jitter, 0 if kind else detail)
            data, crc = cache.get(key) or self.picture(*key)
            add(name, data, crc)
            self.bytes += len(data)
        self.rows += n

    def close(self) -> Path:
        """Finish the zip and move it into place; returns its path."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
            os.replace(self._tmp, self.path)
            log.info("synthetic images: %d rows, %d distinct pictures, %.1f MB in %s",
                     self.rows, len(self._cache), self.bytes / 1e6, self.path)
            self._release()
        return self.path

    def _release(self) -> None:
        self._cache = {}
        _sprite.cache_clear()  # up to ~40 MB of vehicles

    def abort(self) -> None:
        """Drop an unfinished zip (no-op after ``close``)."""
        if self._zip is not None:
            self._zip.discard()
            self._zip = None
            self._tmp.unlink(missing_ok=True)
            self._release()
