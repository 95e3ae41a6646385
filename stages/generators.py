"""Class-conditional generators for XCL-GAN samples: G(z, class_vector) → images in [−1, 1].

Three kinds share that one interface (``z_dim``, ``num_classes``, ``forward(z, y)``):

* **BigGAN** (pytorch-pretrained-biggan) by pretrained name (``biggan-deep-128/256/512``, which
  downloads) or from a local directory (``config.json`` + ``pytorch_model.bin``). The package's
  own ``from_pretrained`` unpickles with ``torch.load`` and ignores missing weights
  (``strict=False``); :func:`load_biggan` loads with ``weights_only=True`` and refuses a
  directory whose weights do not fit its config.
* **PCA generator**: a per-class linear-Gaussian model x = μ_c + U_c·S_c·z fitted on the real
  training images in a second, so the generator path runs end to end here with no GAN weights.
  A mixed class vector mixes the class models with the same z, as BigGAN mixes embeddings.
* Any ``module:factory`` the config names, returning such a module.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import UserError
from core.models import resolve_factory
from core.records.format import sha256_file
from core.store.storage import atomic_write

BIGGAN_CONFIG_NAME = "config.json"
BIGGAN_WEIGHTS_NAME = "pytorch_model.bin"
# BigGAN's truncated normal (pytorch_pretrained_biggan.utils.truncated_noise_sample) cuts at ±2.
TRUNCATION_BOUND = 2.0


def truncated_normal(seed: int, z_dim: int, truncation: float) -> np.ndarray:
    """z ~ N(0, 1) cut to [−2, 2], times ``truncation``: BigGAN's sampling, replayable from ``seed``.

    Rejection sampling with a numpy Generator (exact, and the same numbers on every platform).
    """
    rng = np.random.default_rng(seed)
    out = np.empty(0)
    while len(out) < z_dim:
        draw = rng.standard_normal(2 * z_dim)
        out = np.concatenate([out, draw[np.abs(draw) <= TRUNCATION_BOUND]])
    return (out[:z_dim] * truncation).astype(np.float32)


def class_vector(num_classes: int, i: int, j: int, lam: float) -> np.ndarray:
    """λ·e_i + (1−λ)·e_j (``pytorch_pretrained_biggan.one_hot_from_int`` only makes 1000 classes)."""
    vector = np.zeros(num_classes, dtype=np.float32)
    vector[i] += lam
    vector[j] += 1.0 - lam
    return vector


# ---------------------------------------------------------------- BigGAN


class BigGANGenerator(nn.Module):
    """A BigGAN with its truncation fixed, as G(z, class_vector)."""

    def __init__(self, model: nn.Module, truncation: float) -> None:
        super().__init__()
        if not 0.0 < truncation <= 1.0:
            raise UserError(f"generator.truncation must be in (0, 1], got {truncation}")
        self.model = model
        self.truncation = float(truncation)
        self.z_dim = int(model.config.z_dim)
        self.num_classes = int(model.config.num_classes)

    def forward(self, z: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        return self.model(z, class_vectors, self.truncation)


def _biggan_files(name_or_dir: str, cache_dir: str | None) -> tuple[Path, Path]:
    """Local (config, weights) paths, both present: a directory as is, a pretrained name through
    the package's download cache (the only step that needs the internet)."""
    from pytorch_pretrained_biggan.model import PRETRAINED_CONFIG_ARCHIVE_MAP, PRETRAINED_MODEL_ARCHIVE_MAP

    if name_or_dir in PRETRAINED_MODEL_ARCHIVE_MAP:
        from pytorch_pretrained_biggan.file_utils import cached_path

        try:
            files = (Path(cached_path(PRETRAINED_CONFIG_ARCHIVE_MAP[name_or_dir], cache_dir=cache_dir)),
                     Path(cached_path(PRETRAINED_MODEL_ARCHIVE_MAP[name_or_dir], cache_dir=cache_dir)))
        except Exception as err:  # requests / boto3 raise many types; any of them means no weights
            raise UserError(f"generator {name_or_dir!r}: download failed ({type(err).__name__}); on a machine "
                            f"without internet, point generator.weights at a local directory") from err
    else:
        directory = Path(name_or_dir)
        if not directory.is_dir():
            names = sorted(PRETRAINED_MODEL_ARCHIVE_MAP)
            raise UserError(f"generator {name_or_dir!r}: neither a pretrained name ({names}) "
                            f"nor a directory with {BIGGAN_CONFIG_NAME} and {BIGGAN_WEIGHTS_NAME}")
        files = (directory / BIGGAN_CONFIG_NAME, directory / BIGGAN_WEIGHTS_NAME)
    for path in files:
        if not path.is_file():
            raise UserError(f"generator {name_or_dir!r}: {path} is missing")
    return files


def load_biggan(name_or_dir: str, truncation: float = 0.4, cache_dir: str | None = None) -> BigGANGenerator:
    """A BigGAN from a pretrained name or a local directory, weights loaded without unpickling."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    config_path, weights_path = _biggan_files(name_or_dir, cache_dir)
    try:
        config = BigGANConfig.from_json_file(str(config_path))
        model = BigGAN(config)
    except (ValueError, TypeError, KeyError, IndexError, json.JSONDecodeError) as err:
        raise UserError(f"generator {config_path}: not a BigGAN config ({type(err).__name__}: {err})") from err
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged, truncated or pickled-code file
        raise UserError(f"generator {weights_path}: cannot be loaded safely "
                        f"({str(err).splitlines()[0][:160]})") from err
    if not isinstance(state, dict):
        raise UserError(f"generator {weights_path}: expected a state dict, found {type(state).__name__}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ from the config's
        mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise UserError(f"generator {weights_path}: weights do not fit {config_path.name} ({mismatch[:200]})") from err
    if missing or unexpected:
        raise UserError(f"generator {weights_path}: weights do not fit {config_path.name} "
                        f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    return BigGANGenerator(model.eval(), truncation)


def biggan_digest(name_or_dir: str, cache_dir: str | None = None) -> tuple[str, int]:
    """sha256 over the config and weights files of a BigGAN, and its class count (what the plan
    needs without building the model)."""
    config_path, weights_path = _biggan_files(name_or_dir, cache_dir)
    try:
        num_classes = int(json.loads(config_path.read_text())["num_classes"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise UserError(f"generator {config_path}: not a BigGAN config ({type(err).__name__}: {err})") from err
    text = f"config:{sha256_file(config_path)}\nweights:{sha256_file(weights_path)}\n"
    return hashlib.sha256(text.encode()).hexdigest(), num_classes


def module_digest(module: nn.Module) -> str:
    """sha256 over a module's state (names, dtypes, shapes, bytes): the identity of a factory's
    generator, whose code the config names and whose weights the factory chooses."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_factory_generator(factory: str, kwargs: dict[str, Any]) -> nn.Module:
    """``module:factory(**kwargs)``: code the config names, as ``core.models`` allows it."""
    try:
        model = resolve_factory(factory, allowed_factories=[factory])(**kwargs)
    except TypeError as err:
        raise UserError(f"generator factory {factory!r}: bad kwargs {kwargs} ({err})") from err
    if not isinstance(model, nn.Module) or not all(isinstance(getattr(model, a, None), int)
                                                   for a in ("z_dim", "num_classes")):
        raise UserError(f"generator factory {factory!r} must return a torch module with int z_dim and num_classes, "
                        f"got {type(model).__name__}")
    return model.eval()


def fresh_biggan(config: Any, seed: int = 0, warmup_passes: int = 4) -> nn.Module:
    """A randomly initialised BigGAN that gives finite images in eval mode (for tests and smoke
    runs): spectral norm needs a few forward passes in train mode to settle its power
    iteration, and the final batch norm's affine parameters start uninitialised."""
    from pytorch_pretrained_biggan import BigGAN

    torch.manual_seed(seed)
    model = BigGAN(config)
    for name, parameter in model.named_parameters():
        if name.startswith("generator.bn."):
            with torch.no_grad():
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
    model.train()
    with torch.no_grad():
        for _ in range(warmup_passes):
            z = torch.randn(4, config.z_dim)
            y = torch.eye(config.num_classes)[torch.randint(0, config.num_classes, (4,))]
            model(z, y, 1.0)
    return model.eval()


def save_biggan(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` + ``pytorch_model.bin`` (a plain state dict), the layout
    :func:`load_biggan` and the package's own loader read."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / BIGGAN_CONFIG_NAME, model.config.to_json_string().encode())
    import io

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    atomic_write(directory / BIGGAN_WEIGHTS_NAME, buffer.getvalue())
    return directory


# ---------------------------------------------------------------- PCA generator


class PCAGenerator(nn.Module):
    """Per-class linear-Gaussian image model, mixed by the class vector:
    G(z, y) = Σ_c y_c·(μ_c + B_c·z), in [−1, 1]. λ = 1 gives exactly class i's sample for z."""

    def __init__(self, means: torch.Tensor, bases: torch.Tensor, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.register_buffer("means", means.float())  # [K, D], images scaled to [−1, 1]
        self.register_buffer("bases", bases.float())  # [K, D, r], principal axes × their std
        self.image_shape = tuple(int(s) for s in image_shape)  # (C, H, W)
        self.num_classes, _, self.z_dim = (int(s) for s in bases.shape)

    def forward(self, z: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        per_class = self.means[None] + torch.einsum("kdr,nr->nkd", self.bases, z)  # [N, K, D]
        images = torch.einsum("nk,nkd->nd", class_vectors, per_class)
        return images.clamp(-1.0, 1.0).view(len(z), *self.image_shape)


def fit_pca_generator(images: np.ndarray, labels: np.ndarray, num_classes: int, rank: int = 16) -> PCAGenerator:
    """Fit μ_c and the top ``rank`` principal axes of each class of uint8 NHWC ``images``.

    In float64 with a fixed sign per axis (largest entry positive), so the fit, hence every
    generated image, is the same on every run.
    """
    if rank < 1:
        raise UserError(f"generator.rank must be >= 1, got {rank}")
    n, height, width, channels = images.shape
    flat = images.reshape(n, -1).astype(np.float64) / 127.5 - 1.0
    means = np.zeros((num_classes, flat.shape[1]))
    bases = np.zeros((num_classes, flat.shape[1], rank))
    for c in range(num_classes):
        members = flat[labels == c]
        if len(members) < 2:
            raise UserError(f"generator: class {c} has {len(members)} training images; PCA needs at least 2")
        means[c] = members.mean(0)
        _, singular, axes = np.linalg.svd(members - means[c], full_matrices=False)
        keep = min(rank, len(singular))
        top = axes[:keep]
        top = top * np.sign(top[np.arange(keep), np.abs(top).argmax(1)])[:, None]  # SVD signs are arbitrary
        bases[c, :, :keep] = (top * (singular[:keep, None] / math.sqrt(len(members) - 1))).T
    return PCAGenerator(torch.from_numpy(means), torch.from_numpy(bases), (channels, height, width))


# ---------------------------------------------------------------- output


def to_uint8_images(generated: torch.Tensor, size: tuple[int, int], channels: int) -> np.ndarray:
    """Generator output in [−1, 1] (NCHW) → uint8 NHWC at the teacher's ``size`` and channel count:
    antialiased bilinear resize, RGB → grey by channel mean where needed, round to uint8."""
    return quantize(generated, size, channels).cpu().numpy()


def quantize(generated: torch.Tensor, size: tuple[int, int], channels: int) -> torch.Tensor:
    """:func:`to_uint8_images` as a uint8 NHWC tensor on the generator's device (a fused actor
    hands it to the teachers there)."""
    x = (generated.float().clamp(-1.0, 1.0) + 1.0) * 127.5
    if channels == 1 and x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    elif channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                                            antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
