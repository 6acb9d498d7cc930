"""A small synthetic stand-in for the beans leaf-disease dataset, for CPU tests and demos offline.

The hub's ``AI-Lab-Makerere/beans`` cannot be reached from the dev/CI machines, so tests and the demo
train on images drawn here instead. The schema is beans' own, column for column, so every code path
(column detection, class names, the pre-processing cache) runs exactly as on the real data:

    image_file_path: string, image: Image (PNG bytes), labels: ClassLabel(angular_leaf_spot, bean_rust, healthy)
    splits: train, validation, test

Each image is a leaf (random position, size, rotation, shade and background) whose class is told by its
lesions, loosely after the real diseases: angular leaf spot = a few large angular brown patches with
yellowish margins, bean rust = many small round orange pustules with pale halos, healthy = none (but a
few pale specks, so "any blemish" is not the answer). Lesions scale with the leaf and stay visible at
the tiny preset's 32 px. Exposure, white balance, blur, noise and background debris in the lesions'
colours vary per image with the same distribution for every class, so colour statistics say little:
a logistic regression on per-channel mean/std scores 0.49 on 300 validation images after 1800
training ones (chance 0.33; the lesions themselves add some red), while the randomly initialised
"tiny" ViT of `make demo` (the same 1800 images at 32 px, 10 epochs, ~10-25 s of one CPU core) reaches
0.82-0.94 over the 3x3 batch x lr grid of grids/cpu_tiny.yaml. The validation split is not a slice of
the training one: every image has its own generator, seeded with (seed, split, index).
Everything is a pure function of (seed, split, index): the same arguments give byte-identical PNGs
and therefore the same dataset fingerprint.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

if TYPE_CHECKING:  # datasets is imported lazily: draw_leaf alone should not pay for it
    import datasets

CLASS_NAMES = ["angular_leaf_spot", "bean_rust", "healthy"]
SPLITS = ("train", "validation", "test")
_RENDER_SCALE = 4  # draw at 4x and downsample: anti-aliased edges look like photographs, not pixel art
_META_FILE = "synthetic.json"
GENERATOR_VERSION = 2
"""Recorded in synthetic.json: a folder drawn by another version holds other images, and is not reused.
2: lesions large enough to see at the tiny preset's 32 px, debris in lesion colours on the ground."""
_LESION_RGB = [(115, 80, 50), (185, 95, 35), (165, 160, 70)]  # angular spot brown, rust orange, chlorotic margin


def _leaf_outline(rng: np.random.Generator, r: int) -> tuple[list[tuple[float, float]], tuple[float, float, float, float]]:
    """Polygon of a pointed leaf (an ellipse pinched towards the tip) and its (cx, cy, length, angle)."""
    cx, cy = r * (0.5 + rng.uniform(-0.12, 0.12)), r * (0.5 + rng.uniform(-0.12, 0.12))
    length, width = r * rng.uniform(0.36, 0.48), r * rng.uniform(0.22, 0.32)
    angle = rng.uniform(0, 2 * math.pi)
    ca, sa = math.cos(angle), math.sin(angle)
    points = []
    for t in np.linspace(0, 2 * math.pi, 64, endpoint=False):
        x = length * math.cos(t)
        y = width * math.sin(t) * (1 - 0.35 * (1 + math.cos(t)) / 2)  # narrower towards the tip (t=0)
        points.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return points, (cx, cy, length, angle)


def _draw_veins(draw: ImageDraw.ImageDraw, geom: tuple[float, float, float, float], colour: tuple[int, ...], r: int) -> None:
    cx, cy, length, angle = geom
    ca, sa = math.cos(angle), math.sin(angle)

    def at(u: float, v: float) -> tuple[float, float]:
        return cx + u * ca - v * sa, cy + u * sa + v * ca

    w = max(1, r // 96)
    draw.line([at(-length, 0), at(length, 0)], fill=colour, width=w)
    for u in np.linspace(-0.6, 0.6, 5) * length:
        for side in (-1, 1):
            draw.line([at(u, 0), at(u + 0.3 * length, side * 0.45 * length * 0.6)], fill=colour, width=w)


def _points_on_leaf(rng: np.random.Generator, mask: np.ndarray, count: int) -> list[tuple[int, int]]:
    ys, xs = np.nonzero(mask)
    idx = rng.integers(0, len(xs), size=count)
    return [(int(xs[i]), int(ys[i])) for i in idx]


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


def draw_leaf(label: int, rng: np.random.Generator, image_size: int) -> Image.Image:
    """One RGB image of class ``label`` (index into CLASS_NAMES)."""
    r = image_size * _RENDER_SCALE
    bg = _jitter(rng, [(120, 95, 70), (110, 110, 105), (150, 170, 190), (70, 60, 50)][rng.integers(4)], 25)
    img = Image.new("RGB", (r, r), bg)
    draw = ImageDraw.Draw(img)
    # Background clutter (soil clods, neighbouring leaves' shadows) so the leaf edge is not the only structure.
    for _ in range(rng.integers(3, 8)):
        x, y, s = rng.uniform(0, r), rng.uniform(0, r), rng.uniform(0.03, 0.12) * r
        draw.ellipse([x - s, y - s, x + s, y + s], fill=_jitter(rng, bg, 30))
    # Debris in the lesions' colours (bits of dead leaf, soil), drawn alike for every class: how much
    # brown or orange an image holds does not tell the class; lesions' shapes, on the leaf, do.
    for _ in range(rng.integers(0, 6)):
        x, y, s = rng.uniform(0, r), rng.uniform(0, r), rng.uniform(0.02, 0.06) * r
        draw.ellipse([x - s, y - s, x + s, y + s], fill=_jitter(rng, _LESION_RGB[rng.integers(len(_LESION_RGB))], 20))

    outline, geom = _leaf_outline(rng, r)
    leaf_rgb = _jitter(rng, (75, 140, 55), 25)
    draw.polygon(outline, fill=leaf_rgb)
    mask_img = Image.new("L", (r, r), 0)
    ImageDraw.Draw(mask_img).polygon(outline, fill=255)
    _draw_veins(draw, geom, _jitter(rng, (130, 185, 95), 20), r)
    mask = np.asarray(mask_img) > 0
    unit = geom[2]  # lesion sizes scale with the leaf, as with a camera at varying distance

    name = CLASS_NAMES[label]
    if name == "angular_leaf_spot":
        for x, y in _points_on_leaf(rng, mask, int(rng.integers(3, 7))):
            s = unit * rng.uniform(0.18, 0.30)
            n = int(rng.integers(4, 7))
            phase = rng.uniform(0, 2 * math.pi)
            poly = [
                (x + s * rng.uniform(0.6, 1.2) * math.cos(phase + 2 * math.pi * k / n),
                 y + s * rng.uniform(0.6, 1.2) * math.sin(phase + 2 * math.pi * k / n))
                for k in range(n)
            ]
            # A chlorotic (yellowish) margin around a brown centre, as on real angular lesions.
            halo = [(x + 1.35 * (px - x), y + 1.35 * (py - y)) for px, py in poly]
            draw.polygon(halo, fill=_jitter(rng, _LESION_RGB[2], 20))
            draw.polygon(poly, fill=_jitter(rng, _LESION_RGB[0], 20), outline=_jitter(rng, (70, 50, 30), 15))
    elif name == "bean_rust":
        for x, y in _points_on_leaf(rng, mask, int(rng.integers(12, 30))):
            s = unit * rng.uniform(0.06, 0.09)
            halo = s * rng.uniform(1.4, 1.8)
            draw.ellipse([x - halo, y - halo, x + halo, y + halo], fill=_jitter(rng, (160, 175, 80), 20))
            draw.ellipse([x - s, y - s, x + s, y + s], fill=_jitter(rng, _LESION_RGB[1], 20))
    else:
        for x, y in _points_on_leaf(rng, mask, int(rng.integers(0, 4))):
            s = unit * rng.uniform(0.02, 0.05)
            draw.ellipse([x - s, y - s, x + s, y + s], fill=_jitter(rng, (150, 175, 100), 20))

    # Camera effects, identical in distribution for every class.
    img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
    if rng.uniform() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.5)))
    pixels = np.asarray(img, dtype=np.float32)
    pixels = pixels * rng.uniform(0.7, 1.3) * rng.uniform(0.85, 1.15, size=3)  # exposure and white balance
    pixels += rng.normal(0, rng.uniform(2, 10), size=pixels.shape)  # sensor noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))  # HxWx3 uint8 = RGB


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)  # fixed settings: byte-identical output per seed
    return buf.getvalue()


def _image_png(args: tuple[int, int, int, int, int]) -> bytes:
    label, seed, split_id, index, image_size = args
    return _png(draw_leaf(label, np.random.default_rng([seed, split_id, index]), image_size))


def _split(split: str, num: int, image_size: int, seed: int, num_proc: int = 1) -> "datasets.Dataset":
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    split_id = SPLITS.index(split)
    # Balanced classes in a seeded order; each image gets its own generator so any one of them can be
    # regenerated alone and adding samples does not change the earlier ones (and processes may share the work).
    labels = np.random.default_rng([seed, split_id]).permutation(np.arange(num) % len(CLASS_NAMES)).tolist()
    jobs = [(label, seed, split_id, i, image_size) for i, label in enumerate(labels)]
    if num_proc > 1 and num > 64:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(num_proc) as pool:
            pngs = pool.map(_image_png, jobs, chunksize=16)
    else:
        pngs = [_image_png(job) for job in jobs]
    paths, images = [], []
    for i, (label, png) in enumerate(zip(labels, pngs)):
        name = CLASS_NAMES[label]
        file_name = f"{name}_{split}.{i}.png"
        paths.append(f"synthetic/{split}/{name}/{file_name}")
        images.append({"bytes": png, "path": file_name})
    features = Features(
        {"image_file_path": Value("string"), "image": ImageFeature(), "labels": ClassLabel(names=CLASS_NAMES)}
    )
    return Dataset.from_dict({"image_file_path": paths, "image": images, "labels": labels}, features=features)


def make_beans_like(
    out_dir: str | Path,
    num_train: int = 240,
    num_validation: int = 60,
    num_test: int = 60,
    image_size: int = 64,
    seed: int = 0,
    num_proc: int = 1,
) -> Path:
    """Write a beans-schema DatasetDict with ``save_to_disk`` and return its folder. ``num_proc``
    processes draw the images (the same bytes for any number).

    Idempotent: a folder already holding the same parameters is returned untouched (demos and test
    sessions call this repeatedly); a non-empty folder holding anything else is refused, never wiped.
    """
    from datasets import DatasetDict

    out = Path(out_dir)
    params = dict(num_train=num_train, num_validation=num_validation, num_test=num_test, image_size=image_size, seed=seed,
                  generator=GENERATOR_VERSION)
    meta = out / _META_FILE
    if meta.is_file() and json.loads(meta.read_text()) == params and (out / "dataset_dict.json").is_file():
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not this synthetic dataset ({params}); give an empty or new folder")
    for n, name in zip((num_train, num_validation, num_test), SPLITS):
        if n < 1:
            raise ValueError(f"num_{name}={n}: use at least 1 image per split")
    dd = DatasetDict({s: _split(s, n, image_size, seed, num_proc) for s, n in zip(SPLITS, (num_train, num_validation, num_test))})
    dd.save_to_disk(str(out))
    meta.write_text(json.dumps(params, indent=2))  # written last: its presence means the folder is complete
    return out


def export_image_folder(dataset_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``split/class_name/file.png`` from a save_to_disk folder, for the image-folder loading path.

    The stored encoded bytes are copied as they are (no decode/re-encode), so pixels are identical.
    """
    from datasets import Image as ImageFeature
    from datasets import load_from_disk

    out = Path(out_dir)
    dd = load_from_disk(str(dataset_dir))
    for split, ds in dd.items():
        names = ds.features["labels"].names
        raw = ds.cast_column("image", ImageFeature(decode=False))
        for i, row in enumerate(raw):
            folder = out / split / names[row["labels"]]
            folder.mkdir(parents=True, exist_ok=True)
            file_name = Path(row["image"]["path"] or f"{split}_{i}.png").name
            (folder / file_name).write_bytes(row["image"]["bytes"])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vit_train.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="folder for the save_to_disk dataset (created; must be new or empty)")
    p.add_argument("--num-train", type=int, default=240)
    p.add_argument("--num-validation", type=int, default=60)
    p.add_argument("--num-test", type=int, default=60)
    p.add_argument("--image-size", type=int, default=64, help="square image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-proc", type=int, default=1, help="processes drawing the images (same bytes for any number)")
    p.add_argument("--image-folder", action="store_true", help="also export OUT_DIR-images/split/class/*.png")
    a = p.parse_args(argv)
    out = make_beans_like(a.out_dir, a.num_train, a.num_validation, a.num_test, a.image_size, a.seed, a.num_proc)
    print(f"dataset (save_to_disk): {out}")
    if a.image_folder:
        images = export_image_folder(out, out.with_name(out.name + "-images"))
        print(f"image folder: {images}")


if __name__ == "__main__":
    main()
