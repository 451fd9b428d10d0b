"""Synthetic compositional scenes: the offline demo gallery and the test data.

Each scene holds one to three objects, each with a colour, a shape, a size and a position, on a
textured background, and five differently worded captions. Everything is drawn from
`random.Random(seed, index)`, so the same seed gives the same gallery on any machine, and each
scene's attributes are stored (in the Karpathy JSON's `scene` field) so that retrieval and
arithmetic ("red circle" - "red" + "blue" -> blue circle) can be checked exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from models.data.karpathy import write_karpathy
from models.data.records import ImageRecord

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (245, 220, 30),
    "orange": (245, 140, 20), "purple": (140, 40, 180), "pink": (250, 120, 190),
    "cyan": (40, 210, 220), "white": (250, 250, 250), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
SIZES = {"small": 0.17, "large": 0.30}  # object radius as a share of the image side
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (125, 125, 125), "sand": (160, 145, 115), "slate": (95, 110, 128),
    "olive": (110, 115, 85), "brown": (120, 95, 80),
}
REGIONS = {(0, 0): "in the top left", (1, 0): "at the top", (2, 0): "in the top right", (0, 1): "on the left",
           (1, 1): "in the centre", (2, 1): "on the right", (0, 2): "in the bottom left", (1, 2): "at the bottom",
           (2, 2): "in the bottom right"}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    x: float  # centre, as a share of the width
    y: float  # centre, as a share of the height

    @property
    def region(self) -> str:
        return REGIONS[(min(int(self.x * 3), 2), min(int(self.y * 3), 2))]

    def phrase(self, with_size: bool = True) -> str:
        words = [self.size, self.colour, self.shape] if with_size else [self.colour, self.shape]
        return f"{_article(words[0])} {' '.join(words)}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str

    def as_attributes(self) -> dict:
        return {"background": self.background,
                "objects": [{"colour": o.colour, "shape": o.shape, "size": o.size,
                             "x": round(o.x, 3), "y": round(o.y, 3)} for o in self.objects]}


def sample_scene(rng: random.Random, max_objects: int = 3) -> Scene:
    """Draw one scene: distinct (colour, shape) pairs, placed without overlapping."""
    count = rng.randint(1, max_objects)
    objects: list[SceneObject] = []
    used: set[tuple[str, str]] = set()
    while len(objects) < count:
        colour, shape, size = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(SIZES))
        if (colour, shape) in used:
            continue
        placed = _place(rng, SIZES[size], objects)
        if placed is None:
            count -= 1  # no room left for another object of this size: keep the scene smaller
            continue
        used.add((colour, shape))
        objects.append(SceneObject(colour, shape, size, *placed))
    return Scene(tuple(objects), rng.choice(list(BACKGROUNDS)))


def _place(rng: random.Random, radius: float, others: list[SceneObject]) -> tuple[float, float] | None:
    for _ in range(60):
        x, y = rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius)
        if all(math.hypot(x - o.x, y - o.y) > radius + SIZES[o.size] + 0.02 for o in others):
            return x, y
    return None


def render_scene(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw the scene at `size` x `size`: a noisy gradient background, then each object."""
    image = _background(BACKGROUNDS[scene.background], size, rng)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        radius = SIZES[obj.size] * size
        _draw_shape(draw, obj.shape, obj.x * size, obj.y * size, radius, COLOURS[obj.colour],
                    rng.uniform(-0.25, 0.25))
    return image


def _background(base: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    """A rotated linear gradient around `base` with blurred noise (seeded: Pillow's noise is not)."""
    tilt = rng.uniform(-25, 25)
    gradient = np.asarray(Image.linear_gradient("L").resize((size, size)).rotate(rng.uniform(0, 360)),
                          dtype=np.float32) / 127.5 - 1
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(3, 7), (size, size))
    noise = sum(np.roll(noise, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 3  # soften
    shade = tilt * gradient + noise
    pixels = np.stack([np.clip(value + shade, 0, 255) for value in base], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int], turn: float) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "cross":
        w = r * 0.38
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, turn), fill=fill)


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners, radii, start = 4, [r * 1.2], math.pi / 4
    elif shape == "diamond":
        corners, radii, start = 4, [r * 1.05], 0.0
    elif shape == "triangle":
        corners, radii, start = 3, [r * 1.15], -math.pi / 2
    elif shape == "hexagon":
        corners, radii, start = 6, [r], 0.0
    else:  # star: ten points alternating between outer and inner radius
        corners, radii, start = 10, [r * 1.15, r * 0.5], -math.pi / 2
    turn = turn if shape in ("square", "hexagon", "star") else 0.0
    return [(cx + radii[i % len(radii)] * math.cos(start + turn + 2 * math.pi * i / corners),
             cy + radii[i % len(radii)] * math.sin(start + turn + 2 * math.pi * i / corners))
            for i in range(corners)]


def describe(scene: Scene, rng: random.Random, count: int = 5) -> list[str]:
    """`count` captions in different wordings (templates repeat only when there are fewer than `count`)."""
    templates = _templates(scene)
    rng.shuffle(templates)
    return [templates[i % len(templates)] for i in range(count)]


def _templates(scene: Scene) -> list[str]:
    objs = scene.objects
    if len(objs) == 1:
        (o,) = objs
        return [o.phrase(), f"{o.phrase(False)} {o.region}",
                f"{o.phrase()} on {_article(scene.background)} {scene.background} background",
                f"there is one {o.colour} {o.shape}", f"{o.phrase()} {o.region} of the picture",
                f"a single {o.size} {o.shape} coloured {o.colour}"]
    a, b = objs[0], objs[1]
    pair = [f"{a.phrase()} {_relation(a, b)} {b.phrase()}", f"{b.phrase()} {_relation(b, a)} {a.phrase()}",
            f"{a.phrase(False)} {_relation(a, b)} {b.phrase(False)}"]
    listing = ", ".join(o.phrase(False) for o in objs[:-1]) + f" and {objs[-1].phrase(False)}"
    number = "two" if len(objs) == 2 else "three"
    ground = f"on {_article(scene.background)} {scene.background} background"
    general = [listing, f"{number} shapes: {listing}", f"{listing} {ground}",
               f"{number} objects, " + " and ".join(f"{o.colour} {o.shape}" for o in objs)]
    if len(objs) == 3:
        c = objs[2]
        pair.append(f"{a.phrase(False)} {_relation(a, c)} {c.phrase(False)}, and {b.phrase(False)}")
    return pair + general


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def generate_scenes(out_dir: str | Path, count: int, seed: int = 0, image_size: int = 128,
                    val_fraction: float = 0.1, test_fraction: float = 0.1,
                    max_objects: int = 3, progress: bool = False) -> Path:
    """Render `count` scenes as PNGs plus a Karpathy `dataset.json`; returns the JSON path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    n_val, n_test = round(count * val_fraction), round(count * test_fraction)
    records = []
    for index in tqdm(range(count), desc="drawing scenes", unit="scene", disable=not progress):
        rng = random.Random(f"{seed}:{index}")
        scene = sample_scene(rng, max_objects)
        path = out_dir / "images" / f"scene_{index:06d}.png"
        render_scene(scene, image_size, rng).save(path)
        split = "val" if index < n_val else "test" if index < n_val + n_test else "train"
        records.append(ImageRecord(path.stem, path, tuple(describe(scene, rng)), split,
                                   scene.as_attributes()))
    json_path = out_dir / "dataset.json"
    write_karpathy(records, json_path, f"synthetic-scenes-seed{seed}")
    return json_path
