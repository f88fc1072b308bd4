"""Synthetic dermoscopy-like lesions with patient metadata: the embedded default (demo) data set.

The images are drawn, not photographed: a skin-toned background with noise and hair-like strokes and one lesion
blob whose colour, border, asymmetry and texture depend on the class. Age, sex and anatomical site depend on the
class too. Both modalities overlap between classes (some lesions look like another class, metadata distributions
are wide, about 15% of each metadata column is missing), so that neither the image nor the metadata alone reaches
what both reach together. Several images share a `lesion_id`, so splits must be grouped by it.

The output is a Hugging Face `imagefolder` layout: `images/*.png` plus `metadata.csv` (first column `file_name`),
a `README.md` that says the data is synthetic, and `manifest.json`, written last, which marks the folder complete.
Same arguments → byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

from ..modeling.configuration_skin_fusion import DEFAULT_LABELS

GENERATOR_VERSION = 2
ANATOMICAL_SITES = ("head/neck", "upper extremity", "lower extremity", "anterior torso", "posterior torso")
METADATA_COLUMNS = ("file_name", "label", "age", "sex", "anatom_site_general", "lesion_id")
MANIFEST_NAME = "manifest.json"
DEFAULT_DATASET_NAME = f"synthetic-v{GENERATOR_VERSION}"
DEFAULT_ARGUMENTS = {"n_images": 600, "image_size": 128, "seed": 0, "class_names": DEFAULT_LABELS}

T = TypeVar("T")

# How many images a lesion has (1, 2, 3 or 4) and with which probability: mean about 1.7 images per lesion.
IMAGES_PER_LESION_PROBS = (0.55, 0.25, 0.13, 0.07)
# Probability that a metadata cell is left empty (per lesion and column, independently).
MISSING_PROB = 0.15
# Probability that a lesion's appearance is pulled towards another class (pigmented AK, flat SCC in situ, ...), and
# the range of that pull (0 = its own class, 1 = the other class): such images are ambiguous on their own.
LOOK_ALIKE_PROB = 0.15
LOOK_ALIKE_WEIGHT = (0.2, 0.6)

SKIN_TONES = np.array([(240, 208, 190), (226, 186, 162), (206, 160, 132), (176, 128, 98)], dtype=np.float32)
KERATIN_RGB = np.array((236, 226, 206), dtype=np.float32)
CRUST_RGB = np.array((120, 40, 35), dtype=np.float32)
HAIR_RGB = np.array((60, 40, 30), dtype=np.float32)


@dataclass(frozen=True)
class LesionProfile:
    """Class-conditional distributions of one class: metadata first, then appearance (RGB and shape on [0, 1])."""

    prior: float
    age_mean: float
    age_sd: float
    male_prob: float
    site_probs: tuple[float, ...]  # over ANATOMICAL_SITES
    colour: tuple[float, float, float]  # mean lesion RGB
    colour_sd: float
    opacity: float  # how strongly the lesion colour covers the skin
    softness: float  # border width relative to the radius: small = sharp
    irregularity: float  # amplitude of the border's harmonics
    asymmetry: float  # elongation and off-centre bulge
    radius: float  # fraction of the half image
    scale: float  # white flaky scale (AK)
    keratin: float  # whitish keratotic centre and crust (SCC)
    stuck_on: float  # milia-like cysts, comedo-like openings and ridges (seborrhoeic / benign keratosis)


# Loosely modelled on isic-seed3 and the dermoscopy literature; ranges overlap on purpose.
PROFILES: dict[str, LesionProfile] = {
    "actinic keratosis": LesionProfile(
        prior=0.16, age_mean=71, age_sd=9, male_prob=0.75, site_probs=(0.78, 0.12, 0.04, 0.03, 0.03),
        colour=(210, 130, 125), colour_sd=16, opacity=0.75, softness=0.19, irregularity=0.11, asymmetry=0.18,
        radius=0.53, scale=0.39, keratin=0.35, stuck_on=0.0,
    ),
    "squamous cell carcinoma": LesionProfile(
        prior=0.245, age_mean=73, age_sd=10, male_prob=0.55, site_probs=(0.12, 0.33, 0.41, 0.07, 0.07),
        colour=(210, 131, 126), colour_sd=16, opacity=0.75, softness=0.19, irregularity=0.12, asymmetry=0.19,
        radius=0.53, scale=0.37, keratin=0.37, stuck_on=0.0,
    ),
    "pigmented benign keratosis": LesionProfile(
        prior=0.595, age_mean=62, age_sd=15, male_prob=0.48, site_probs=(0.18, 0.14, 0.16, 0.26, 0.26),
        colour=(142, 92, 64), colour_sd=24, opacity=0.82, softness=0.07, irregularity=0.05, asymmetry=0.10,
        radius=0.52, scale=0.1, keratin=0.0, stuck_on=0.7,
    ),
}


@dataclass(frozen=True)
class _Lesion:
    """One lesion: its class, its patient's metadata and its appearance (shared by all its images)."""

    label: int
    age: float | None
    sex: str | None
    site: str | None
    look: LesionProfile
    skin: np.ndarray
    colour: np.ndarray
    harmonics: np.ndarray  # (k, amplitude, phase) rows
    elongation: float
    seed: int


def class_profiles(class_names: tuple[str, ...]) -> list[LesionProfile]:
    """Profiles of the given classes; a name not in `PROFILES` gets a deterministic blend of the known ones."""
    known = list(PROFILES.values())
    profiles = []
    for name in class_names:
        if name in PROFILES:
            profiles.append(PROFILES[name])
            continue
        # crc32 rather than hash(): Python salts string hashes per process, which would break determinism.
        weights = np.random.default_rng(zlib.crc32(name.encode())).dirichlet([0.3] * len(known))
        profiles.append(_blend(known, weights))
    return profiles


def generate_synthetic_lesions(
    out_dir: str | Path,
    n_images: int = 600,
    image_size: int = 128,
    seed: int = 0,
    class_names: tuple[str, ...] = DEFAULT_LABELS,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic imagefolder data set (`images/*.png`, `metadata.csv`, `README.md`, `manifest.json`).

    Args:
        out_dir: folder to write; created if absent. It must be empty unless `overwrite` is set.
        n_images: number of images (lesions have 1–4 images each).
        image_size: side of the square images in pixels.
        seed: random seed; the same arguments give byte-identical files.
        class_names: label names; the three default classes have hand-made profiles, other names get blends.
        overwrite: delete the files a previous run wrote in `out_dir` (`images/` and the three files) first.

    Returns:
        `out_dir` as a `Path`.
    """
    _check_arguments(n_images, image_size, seed, class_names)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty. Choose an empty folder, or pass overwrite=True to replace a previous run."
            )
        shutil.rmtree(out_dir / "images", ignore_errors=True)
        for name in ("metadata.csv", "README.md", MANIFEST_NAME):
            (out_dir / name).unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)

    profiles = class_profiles(tuple(class_names))
    rows = []
    for lesion_index, (lesion, n_views) in enumerate(_sample_lesions(n_images, profiles, seed)):
        for view in range(n_views):
            file_name = f"images/synth_{seed}_{len(rows):05d}.png"
            image = _render(lesion, view, image_size)
            Image.fromarray(image).save(out_dir / file_name, format="PNG", compress_level=1)  # fast; lossless anyway
            age = "" if lesion.age is None else str(int(lesion.age))
            rows.append(
                (file_name, class_names[lesion.label], age, lesion.sex or "", lesion.site or "",
                 f"SYNL_{seed}_{lesion_index:05d}")
            )

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METADATA_COLUMNS)
    writer.writerows(rows)
    metadata = buffer.getvalue().encode()
    (out_dir / "metadata.csv").write_bytes(metadata)
    (out_dir / "README.md").write_text(_readme(n_images, image_size, seed, class_names, rows), encoding="utf-8")
    manifest = {
        "generator": "skin_fusion.data.synthetic",
        "version": GENERATOR_VERSION,
        "arguments": {"n_images": n_images, "image_size": image_size, "seed": seed, "class_names": list(class_names)},
        "files": len(rows),
        "metadata_sha256": hashlib.sha256(metadata).hexdigest(),
    }
    # Written last: its presence means every image and the CSV are complete.
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def is_complete(data_dir: str | Path, **arguments: object) -> bool:
    """Whether `data_dir` holds a finished generation (manifest, CSV and every image), with these arguments if given."""
    data_dir = Path(data_dir)
    try:
        manifest = json.loads((data_dir / MANIFEST_NAME).read_text())
        metadata = (data_dir / "metadata.csv").read_bytes()
    except (OSError, ValueError):
        return False
    if manifest.get("version") != GENERATOR_VERSION:
        return False
    recorded = manifest.get("arguments", {})
    # Compared in their JSON form, where tuples are lists.
    if any(recorded.get(key) != json.loads(json.dumps(value)) for key, value in arguments.items()):
        return False
    if hashlib.sha256(metadata).hexdigest() != manifest.get("metadata_sha256"):
        return False
    file_names = [row[0] for row in csv.reader(io.StringIO(metadata.decode()))][1:]
    return len(file_names) == manifest.get("files") and all((data_dir / name).is_file() for name in file_names)


def ensure_default_dataset(cache_dir: str | Path | None = None) -> Path:
    """The default synthetic set in `cache_dir/synthetic-v2` (default `~/.cache/skin_fusion`), generated once.

    A folder without a valid manifest (an interrupted run) is generated again, never used half-written: generation
    happens in a temporary sibling folder that is renamed into place when complete.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "skin_fusion"
    target = cache_dir / DEFAULT_DATASET_NAME
    if is_complete(target, **DEFAULT_ARGUMENTS):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_DATASET_NAME}-", dir=cache_dir))
    try:
        generate_synthetic_lesions(staging, **DEFAULT_ARGUMENTS)
        # Another process may have finished first: keep its copy rather than delete a folder it may be reading.
        if not is_complete(target, **DEFAULT_ARGUMENTS):
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.rename(staging, target)
            except OSError:
                if not is_complete(target, **DEFAULT_ARGUMENTS):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_arguments(n_images: int, image_size: int, seed: int, class_names: tuple[str, ...]) -> None:
    if seed < 0:
        raise ValueError(f"seed={seed} must be a non-negative integer.")
    if n_images < 1:
        raise ValueError(f"n_images={n_images} must be at least 1.")
    if image_size < 32:
        raise ValueError(f"image_size={image_size} is too small to draw a lesion; use 32 or more.")
    if len(class_names) < 2 or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names={class_names!r} must hold at least two distinct names.")


def _blend(profiles: list[LesionProfile], weights: np.ndarray) -> LesionProfile:
    values = {}
    for f in fields(LesionProfile):
        stacked = np.array([getattr(p, f.name) for p in profiles], dtype=np.float64)
        mixed = np.tensordot(weights, stacked, axes=1)
        values[f.name] = tuple(float(v) for v in mixed) if stacked.ndim == 2 else float(mixed)
    return LesionProfile(**values)


def _sample_lesions(n_images: int, profiles: list[LesionProfile], seed: int) -> Iterator[tuple[_Lesion, int]]:
    """Yield (lesion, number of its images) until `n_images` images are planned."""
    rng = np.random.default_rng([seed, GENERATOR_VERSION])
    priors = np.array([p.prior for p in profiles])
    priors /= priors.sum()
    planned = 0
    while planned < n_images:
        label = int(rng.choice(len(profiles), p=priors))
        profile = profiles[label]
        look = profile
        if rng.random() < LOOK_ALIKE_PROB:
            other = profiles[int(rng.choice([i for i in range(len(profiles)) if i != label]))]
            weight = rng.uniform(*LOOK_ALIKE_WEIGHT)
            look = _blend([profile, other], np.array([1 - weight, weight]))
        n_views = min(int(rng.choice(len(IMAGES_PER_LESION_PROBS), p=IMAGES_PER_LESION_PROBS)) + 1,
                      n_images - planned)
        planned += n_views
        # Ages are rounded to 5 years like ISIC's `age_approx`.
        age = _maybe(rng, float(np.clip(round(rng.normal(profile.age_mean, profile.age_sd) / 5) * 5, 15, 85)))
        sex = _maybe(rng, "male" if rng.random() < profile.male_prob else "female")
        site_index = int(rng.choice(len(ANATOMICAL_SITES), p=_normalised(profile.site_probs)))
        site = _maybe(rng, ANATOMICAL_SITES[site_index])
        lesion = _Lesion(
            label=label,
            age=age,
            sex=sex,
            site=site,
            look=look,
            skin=_skin_tone(rng),
            colour=_lesion_colour(rng, look),
            harmonics=np.array(
                [(k, abs(rng.normal(0, look.irregularity)) * 2 / k, rng.uniform(0, 2 * np.pi)) for k in range(2, 8)]
            ),
            elongation=float(1 + abs(rng.normal(0, look.asymmetry))),
            seed=int(rng.integers(2**31)),
        )
        yield lesion, n_views


def _maybe(rng: np.random.Generator, value: T) -> T | None:
    return None if rng.random() < MISSING_PROB else value


def _normalised(probs: tuple[float, ...]) -> np.ndarray:
    array = np.asarray(probs, dtype=np.float64)
    return array / array.sum()


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    position = rng.beta(2, 3) * (len(SKIN_TONES) - 1)
    low = int(position)
    high = min(low + 1, len(SKIN_TONES) - 1)
    return SKIN_TONES[low] + (position - low) * (SKIN_TONES[high] - SKIN_TONES[low])


def _lesion_colour(rng: np.random.Generator, look: LesionProfile) -> np.ndarray:
    """Mean RGB of one lesion: mostly lighter or darker along the class hue, with a little hue jitter."""
    shade = rng.normal(0, look.colour_sd)
    colour = np.array(look.colour) + shade * np.array(look.colour) / 160 + rng.normal(0, 5, 3)
    return np.clip(colour, 0, 255).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-scale noise that varies over about `size / cells` pixels."""
    coarse = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _render(lesion: _Lesion, view: int, size: int) -> np.ndarray:
    """Draw one image (H, W, 3) uint8 of `lesion`; each view differs in pose, lighting, noise and hair."""
    rng = np.random.default_rng([lesion.seed, view])
    look = lesion.look
    ys, xs = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)

    # Skin: tone, uneven lighting, mottling and fine grain.
    lighting = 1 + rng.normal(0, 0.05) * xs + rng.normal(0, 0.05) * ys + rng.normal(0, 0.04)
    image = lesion.skin * lighting[..., None] + 7 * _smooth_noise(rng, size, 6)[..., None]

    # Lesion blob: an elongated, rotated ellipse whose radius wobbles with the angle.
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.normal(0, 0.08, 2)
    u = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
    v = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
    r = np.hypot(u / lesion.elongation, v * lesion.elongation)
    theta = np.arctan2(v, u)
    k, amplitude, phase = lesion.harmonics.T
    wobble = (amplitude[:, None, None] * np.cos(k[:, None, None] * theta + phase[:, None, None])).sum(0)
    radius = look.radius * math.exp(rng.normal(0, 0.12)) * (1 + wobble)
    softness = max(look.softness * math.exp(rng.normal(0, 0.3)), 0.02)
    mask = 1 / (1 + np.exp((r - radius) / (softness * look.radius)))
    inside = np.clip(1 - r / np.maximum(radius, 1e-3), 0, 1)

    lesion_rgb = lesion.colour + 10 * _smooth_noise(rng, size, 5)[..., None]
    opacity = np.clip(look.opacity + rng.normal(0, 0.08), 0.2, 1.0)
    image = image + (mask * opacity)[..., None] * (lesion_rgb - image)

    if look.scale > 0:  # fine white flakes scattered over the lesion
        flakes = np.clip(_smooth_noise(rng, size, size // 4) - 1.2, 0, 1) * look.scale * 1.5
        image = image + (mask * flakes)[..., None] * (KERATIN_RGB - image)
    if look.keratin > 0:  # whitish keratotic centre, with crust specks
        centre = np.clip(inside * 1.6 - 0.3 + 0.3 * _smooth_noise(rng, size, 8), 0, 1) * look.keratin
        image = image + (mask * centre)[..., None] * (KERATIN_RGB - image)
        crust = np.clip(_smooth_noise(rng, size, size // 6) - 1.6, 0, 1) * look.keratin * 1.5
        image = image + (mask * crust)[..., None] * (CRUST_RGB - image)
    if look.stuck_on > 0:  # cerebriform ridges, bright cysts and dark openings
        ridges = np.abs(_smooth_noise(rng, size, size // 10))
        image = image * (1 - (mask * look.stuck_on * 0.25 * np.clip(1 - ridges, 0, 1)))[..., None]
        dots = _smooth_noise(rng, size, size // 5)
        image = image + (mask * np.clip(dots - 1.7, 0, 1) * look.stuck_on * 2)[..., None] * (KERATIN_RGB - image)
        image = image * (1 - mask * np.clip(-dots - 1.7, 0, 1) * look.stuck_on * 1.5)[..., None]

    # Camera: white balance, grain, sometimes the dark circle of the dermatoscope.
    image = image * rng.normal(1, 0.03, 3).astype(np.float32) + rng.normal(0, 3, (size, size, 1)).astype(np.float32)
    if rng.random() < 0.3:
        image = image * np.clip((1.35 + rng.normal(0, 0.05) - np.hypot(xs, ys)) * 8, 0, 1)[..., None]
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    _draw_hairs(pil, rng, size)
    return np.asarray(pil)


def _draw_hairs(pil: Image.Image, rng: np.random.Generator, size: int) -> None:
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.poisson(1.5)):
        start, bend, end = rng.uniform(-0.2, 1.2, (3, 2)) * size
        t = np.linspace(0, 1, 12)[:, None]
        points = (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end  # quadratic Bezier
        colour = tuple(int(c) for c in np.clip(HAIR_RGB + rng.normal(0, 15), 0, 255))
        draw.line([tuple(p) for p in points], fill=colour, width=int(rng.integers(1, 3)))


def _readme(n_images: int, image_size: int, seed: int, class_names: tuple[str, ...], rows: list[tuple]) -> str:
    counts = {name: sum(row[1] == name for row in rows) for name in class_names}
    lesions = len({row[5] for row in rows})
    lines = [
        "# SYNTHETIC demo data — not real skin lesions",
        "",
        "Every image in this folder was drawn by a program (`skin_fusion.data.synthetic`, generator version "
        f"{GENERATOR_VERSION}, seed {seed}). No image shows a real lesion and no row describes a real patient.",
        "It exists so that SkinFusion's training, evaluation and demo run without downloading anything.",
        "A model trained on it has learned nothing about dermatology: never use it for any medical purpose.",
        "",
        f"- images: {n_images} PNG at {image_size}×{image_size} from {lesions} synthetic lesions (`lesion_id`; "
        "split by it)",
        "- classes: " + ", ".join(f"{name} {count}" for name, count in counts.items()),
        f"- metadata: `age`, `sex`, `anatom_site_general`, each about {MISSING_PROB:.0%} empty (missing)",
        "- layout: Hugging Face imagefolder; load with `datasets.load_dataset(\"imagefolder\", data_dir=...)`",
        "",
        "Regenerate: `skin_fusion.data.synthetic.generate_synthetic_lesions(out_dir, "
        f"n_images={n_images}, image_size={image_size}, seed={seed}"
        + ("" if tuple(class_names) == DEFAULT_LABELS else f", class_names={tuple(class_names)!r}")
        + ")`.",
        "",
    ]
    return "\n".join(lines)
