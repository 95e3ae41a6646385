"""A bundled regression data set: procedurally rendered grey eye images with a 2-D gaze target.

Images are 36×60 like MPIIGaze's normalised eye patches. The gaze (yaw, pitch) in radians moves
the iris and pupil over a spherical eyeball; the eyelids follow the pitch and close more or
less per image (squints occlude the iris); eye width varies; a head-pose-like shift, roll and
scale move the whole eye; lighting (gain, gradient, gamma), an occasional reflection of glasses,
blur, contrast loss and sensor noise vary per image, with a per-image degradation drawn so that
some eyes are crisp and some are webcam-poor (as in MPIIGaze's in-the-wild captures). The
degradation makes the task's uncertainty depend on the image (heteroscedastic), which is what a
Gaussian head can learn. Every image is a pure function of ``(seed, index)``, rendered at 2×
and box-filtered down, so the iris position is resolved below one pixel.

Gaze vectors follow MPIIGaze: g = (−cos φ·sin θ, −sin φ, −cos φ·cos θ) for yaw θ, pitch φ.
"""

from __future__ import annotations

import math

import numpy as np

HEIGHT, WIDTH = 36, 60
SUPERSAMPLE = 2
YAW_RANGE = (-0.6, 0.6)  # radians (±34°), about MPIIGaze's normalised range
PITCH_RANGE = (-0.45, 0.3)  # radians (−26° … 17°): people look down more often than up
GAZE_STREAM = 0x6A7E  # keeps these draws apart from every other use of (seed, index)
# Test images are indices TEST_OFFSET, TEST_OFFSET + 1, ...: never the training images.
TEST_OFFSET = 1 << 32
# Bump when the renderer's pixels change, so cached renders are not reused.
RENDER_VERSION = 3


# Pixel centres of the supersampled canvas (rows, columns), shared by every render.
_GRID = np.mgrid[0:HEIGHT * SUPERSAMPLE, 0:WIDTH * SUPERSAMPLE].astype(np.float64) + 0.5


def _render_one(rng: np.random.Generator, yaw: float, pitch: float) -> np.ndarray:
    """One eye as float [0, 1] at SUPERSAMPLE× resolution, then box-filtered to 36×60."""
    s = SUPERSAMPLE
    height, width = HEIGHT * s, WIDTH * s
    scale = rng.uniform(0.85, 1.15) * s
    cx = width / 2 + rng.normal(0, 3.0) * s
    cy = height / 2 + rng.normal(0, 2.0) * s
    roll = rng.normal(0, 0.12)
    degrade = rng.uniform(0.0, 1.0)  # 0: a crisp capture, 1: a dark, blurred, noisy webcam frame
    ys, xs = _GRID
    # Eye-centred coordinates (u right, v down), rotated by the head roll.
    u = (xs - cx) * math.cos(roll) + (ys - cy) * math.sin(roll)
    v = -(xs - cx) * math.sin(roll) + (ys - cy) * math.cos(roll)
    radius = 13.0 * scale  # eyeball
    half_width = rng.uniform(18.5, 23.0) * scale  # eye corners at ±half_width
    opening = rng.uniform(0.65, 1.15)  # below 1: a squint, the lids cover more of the iris
    upper = (8.5 + 9.0 * pitch + rng.normal(0, 0.6)) * scale * opening  # the upper lid rises when looking up
    lower = (6.5 - 3.0 * pitch + rng.normal(0, 0.4)) * scale * opening
    shape = np.clip(1.0 - (u / half_width) ** 2, 0.0, None)
    open_eye = (v > -upper * shape) & (v < lower * shape)
    skin, sclera = rng.uniform(0.45, 0.7), rng.uniform(0.78, 0.92)
    iris_tone, pupil_tone = rng.uniform(0.15, 0.45), rng.uniform(0.02, 0.08)
    image = np.full((height, width), skin)
    # Crease above the upper lid and a shadow band at its edge.
    image -= 0.12 * np.exp(-((v + upper * shape + 3.0 * scale) / (1.5 * scale)) ** 2) * (shape > 0)
    image = np.where(open_eye, sclera, image)

    iris_u, iris_v = radius * math.sin(yaw) * math.cos(pitch), -radius * math.sin(pitch)
    iris_r = 5.6 * scale
    # Foreshortening: the iris disc turns away from the camera with the gaze.
    du = (u - iris_u) / (iris_r * max(math.cos(yaw), 0.3))
    dv = (v - iris_v) / (iris_r * max(math.cos(pitch), 0.3))
    iris_d = np.hypot(du, dv)
    pupil_r = rng.uniform(0.35, 0.5)
    iris = np.where(iris_d < pupil_r, pupil_tone, iris_tone * (0.85 + 0.3 * iris_d))
    image = np.where(open_eye & (iris_d < 1.0), iris, image)
    # Corneal glint from a fixed light up-left of the camera.
    glint = np.exp(-(((u - iris_u + 1.5 * scale) ** 2 + (v - iris_v + 1.5 * scale) ** 2) / (0.8 * scale) ** 2))
    image = np.where(open_eye, np.maximum(image, 0.98 * glint), image)
    # The upper lid's lashes darken the top of the opening.
    image -= 0.18 * open_eye * np.exp(-((v + upper * shape) / (1.2 * scale)) ** 2)

    if rng.uniform() < 0.25:  # a reflection on glasses: a bright smear over part of the eye
        gu, gv = rng.uniform(-0.8, 0.8) * half_width, rng.uniform(-1.0, 1.0) * 8.0 * scale
        size, angle = rng.uniform(3.0, 9.0) * scale, rng.uniform(0.0, math.pi)
        along = (u - gu) * math.cos(angle) + (v - gv) * math.sin(angle)
        across = -(u - gu) * math.sin(angle) + (v - gv) * math.cos(angle)
        image = image + rng.uniform(0.25, 0.7) * np.exp(-(along / size) ** 2 - (across / (0.35 * size)) ** 2)

    gain, gradient = rng.uniform(0.6, 1.25) * (1.0 - 0.3 * degrade), rng.normal(0, 0.25, size=2)
    image = image * gain * (1.0 + gradient[0] * (xs / width - 0.5) + gradient[1] * (ys / height - 0.5))
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    small = image.reshape(HEIGHT, s, WIDTH, s).mean(axis=(1, 3))
    blur = rng.uniform(0.0, 0.6 + 0.9 * degrade)
    if blur > 0.2:
        small = _gaussian_blur(small, blur)
    contrast = 1.0 - 0.35 * degrade * rng.uniform()
    small = small.mean() + contrast * (small - small.mean())
    noise = 0.004 + 0.035 * degrade**2 * rng.uniform(0.5, 1.0)
    return np.clip(small + rng.normal(0, noise, small.shape), 0.0, 1.0)


def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) matrix of a 1-D Gaussian blur with edge-replicating borders."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    matrix = np.zeros((size, size))
    rows = np.arange(size)
    for offset, tap in zip(range(-radius, radius + 1), taps, strict=True):
        np.add.at(matrix, (rows, np.clip(rows + offset, 0, size - 1)), tap)
    return matrix


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edges replicated), as two small matrix products."""
    return _blur_matrix(image.shape[0], sigma) @ image @ _blur_matrix(image.shape[1], sigma).T


def draw_gaze(rng: np.random.Generator) -> tuple[float, float]:
    return float(rng.uniform(*YAW_RANGE)), float(rng.uniform(*PITCH_RANGE))


def render_eye(seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the set with ``seed``: uint8 (36, 60, 1) and gaze float32 (yaw, pitch)."""
    rng = np.random.default_rng([seed, GAZE_STREAM, index])
    yaw, pitch = draw_gaze(rng)
    image = _render_one(rng, yaw, pitch)
    return np.rint(image * 255.0).astype(np.uint8)[:, :, None], np.asarray([yaw, pitch], np.float32)


def render_eyes(seed: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start … start+count−1``: uint8 (count, 36, 60, 1) and gaze float32 (count, 2)."""
    pairs = [render_eye(seed, i) for i in range(start, start + count)]
    if not pairs:
        return np.zeros((0, HEIGHT, WIDTH, 1), np.uint8), np.zeros((0, 2), np.float32)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def render_split(seed: int, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``train`` (indices 0…) or ``test`` (indices TEST_OFFSET…) split of the set ``seed``."""
    return render_eyes(seed, 0 if split == "train" else TEST_OFFSET, count)


# ---------------------------------------------------------------- gaze geometry


def gaze_vectors(yaw_pitch: np.ndarray) -> np.ndarray:
    """(…, 2) yaw/pitch in radians → (…, 3) unit gaze vectors (MPIIGaze convention)."""
    yaw, pitch = yaw_pitch[..., 0], yaw_pitch[..., 1]
    return np.stack([-np.cos(pitch) * np.sin(yaw), -np.sin(pitch), -np.cos(pitch) * np.cos(yaw)], axis=-1)


def angular_error_degrees(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Angle between predicted and true gaze directions, in degrees, per sample."""
    a, b = gaze_vectors(np.asarray(predicted, np.float64)), gaze_vectors(np.asarray(target, np.float64))
    cosine = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
