"""XCL-GAN images: a class-conditional generator with mixed class vectors (XCL §4.2, supp. A.6).

A ``gan`` sample's parameters are drawn by :class:`core.samplers.gan.Gan` (classes i, j, λ and a
z seed). Its image: x = G(z; λ·e_i + (1−λ)·e_j) with z = truncation ·
N(0, 1) cut at ±2 from ``default_rng(z_seed)``, resized (antialiased) to the set's image size,
quantised to uint8. BigGAN's class embedding is linear, so G sees λ·v_i + (1−λ)·v_j.

Generation is batched: :class:`GeneratorRunner` runs forward passes of exactly
``generator.batch_size`` rows, padding the last one with copies of its last row. At a fixed
shape a sample's pixels do not depend on the other rows of its pass (CPU kernels choose their
blocking by shape: measured here, a BigGAN pass of 7 rows and one of 64 differed in the last
float bits and, after rounding, in a few pixels per thousand images; at one shape they never
did, whatever the neighbours), so any stored sample replays exactly in a pass of its own.

A generated sample carries no real label (``.cls``): the teachers label it, as they label
mixes. ``class_i`` / ``class_j`` record the teacher classes the generator was asked for
(``class_map``; −1 where a generator class has no teacher class).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from core.config import SetConfig, SourceConfig
from core.errors import UserError
from core.options.generator import GeneratorConfig
from core.samplers import Params
from core.samplers.gan import GanOptions
from core.sources import Source, load_source_cached
from stages.generators import (
    biggan_digest,
    build_factory_generator,
    class_vector,
    fit_pca_generator,
    load_biggan,
    module_digest,
    quantize,
    truncated_normal,
)
from stages.teachers import AUTOCAST_DTYPES, resolve_device, torch_threads

Generate = Callable[[list[Params]], np.ndarray]  # gan params of a shard → their uint8 NHWC images


def set_generator(set_cfg: SetConfig) -> GeneratorConfig | None:
    """The generator of a set's ``gan`` samplers (a set has at most one), or None."""
    return next((g for s in set_cfg.sampler_list() if (g := s.generator_of()) is not None), None)


# ---------------------------------------------------------------- plan-time resolution


def _teacher_class(value: int | str, classes: list[str], where: str) -> int:
    if isinstance(value, str):
        if value not in classes:
            raise UserError(f"{where}: {value!r} is not a teacher class ({classes[:10]})")
        return classes.index(value)
    if not 0 <= value < len(classes):
        raise UserError(f"{where}: teacher class {value} is not in 0..{len(classes) - 1}")
    return int(value)


def resolve_generator(cfg: GeneratorConfig, source: Source) -> tuple[GeneratorConfig, int]:
    """The generator with its truncation and weights digest filled in, and its class count.
    Refuses weights that differ from a pinned ``sha256``."""
    digest, num_classes = LOADERS[cfg.kind].digest(cfg, source)
    if cfg.sha256 is not None and digest is not None and cfg.sha256 != digest:
        raise UserError(f"generator {cfg.weights or cfg.factory}: weights have sha256 {digest[:16]}…, the config "
                        f"pins {cfg.sha256[:16]}…; update generator.sha256 or restore the weights")
    return cfg.model_copy(update={"truncation": cfg.resolved_truncation(), "sha256": digest}), num_classes


def resolve_gan(cfg: GanOptions, source: Source, generator: tuple[GeneratorConfig, int]) -> GanOptions:
    """Fill what a ``gan`` sampler draws from: the class list and the class map as indices.

    ``class_map`` defaults to the identity when the generator and the teachers have the same
    number of classes; ``classes`` to the mapped generator classes, else all of them.
    """
    resolved, num_classes = generator
    where = "gan sampler"
    if cfg.class_map is not None:
        unknown = [c for c in cfg.class_map if not 0 <= c < num_classes]
        if unknown:
            raise UserError(f"{where}: class_map names generator classes {unknown[:5]}, the generator has "
                            f"{num_classes}")
        class_map = {int(k): _teacher_class(v, source.classes, f"{where}: class_map[{k}]")
                     for k, v in sorted(cfg.class_map.items())}
    elif num_classes == source.num_classes:
        class_map = {c: c for c in range(num_classes)}
    else:
        class_map = {}
    classes = cfg.classes if cfg.classes is not None else \
        (sorted(class_map) if cfg.class_map is not None else list(range(num_classes)))
    outside = [c for c in classes if not 0 <= c < num_classes]
    if outside:
        raise UserError(f"{where}: classes {outside[:5]} are not generator classes 0..{num_classes - 1}")
    return cfg.model_copy(update={"generator": resolved, "classes": list(classes), "class_map": class_map})


def resolve_gan_samplers(set_cfg: SetConfig, source: Source) -> SetConfig:
    """The set with every ``gan`` sampler resolved (the generator loaded once to check it)."""
    generator = set_generator(set_cfg)
    if generator is None:
        return set_cfg
    resolved_generator = resolve_generator(generator, source)
    samplers = [resolve_gan(s, source, resolved_generator) if isinstance(s, GanOptions) else s
                for s in set_cfg.sampler_list()]
    return set_cfg.with_samplers(samplers)


# ---------------------------------------------------------------- running a generator


class GeneratorLoader:
    """How one kind of generator is loaded: at plan time its weights' digest and class count, in
    each worker the module G(z, class_vectors) on the CPU, in eval mode."""

    def digest(self, cfg: GeneratorConfig, source: Source) -> tuple[str | None, int]:
        raise NotImplementedError

    def build(self, cfg: GeneratorConfig, source: Source) -> Any:
        raise NotImplementedError


class BigGanLoader(GeneratorLoader):
    """Pretrained BigGAN weights, read without pickle."""

    def digest(self, cfg: GeneratorConfig, source: Source) -> tuple[str | None, int]:
        assert cfg.weights is not None
        return biggan_digest(cfg.weights)

    def build(self, cfg: GeneratorConfig, source: Source) -> Any:
        assert cfg.weights is not None
        return load_biggan(cfg.weights, truncation=cfg.resolved_truncation())


class FactoryLoader(GeneratorLoader):
    """A module the config names: its digest is its parameters' and buffers'."""

    def digest(self, cfg: GeneratorConfig, source: Source) -> tuple[str | None, int]:
        model = self.build(cfg, source)
        return module_digest(model), int(model.num_classes)

    def build(self, cfg: GeneratorConfig, source: Source) -> Any:
        assert cfg.factory is not None
        return build_factory_generator(cfg.factory, cfg.kwargs)


class PcaLoader(GeneratorLoader):
    """Fitted on the source in each worker: a function of the source (in the fingerprint already)
    and the rank, so it has no digest."""

    def digest(self, cfg: GeneratorConfig, source: Source) -> tuple[str | None, int]:
        return None, source.num_classes

    def build(self, cfg: GeneratorConfig, source: Source) -> Any:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):  # one BLAS thread: the same SVD, hence the same fit, in every worker
            return fit_pca_generator(source.images(), source.labels, source.num_classes, cfg.rank).eval()


LOADERS: dict[str, GeneratorLoader] = {"biggan": BigGanLoader(), "factory": FactoryLoader(), "pca": PcaLoader()}


class GeneratorRunner:
    """A set's generator on its device: gan parameters → uint8 NHWC images at the set's size.

    Every forward pass has exactly ``batch_size`` rows, runs with ``threads`` torch threads and,
    on CUDA, with deterministic cuDNN and the configured autocast; see the module docstring.
    """

    def __init__(self, cfg: GeneratorConfig, source: Source, *, device: str = "cpu", threads: int = 1) -> None:
        import torch

        self.cfg, self.threads = cfg, threads
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        self.autocast = AUTOCAST_DTYPES[cfg.autocast] if self.device.type == "cuda" else None
        with torch_threads(threads):
            self.model = LOADERS[cfg.kind].build(cfg, source).to(self.device).eval()
        self.z_dim, self.num_classes = int(self.model.z_dim), int(self.model.num_classes)
        self.size, self.channels = (source.shape[0], source.shape[1]), source.shape[2]

    def inputs(self, params: Sequence[Params]) -> tuple[np.ndarray, np.ndarray]:
        """z and class vectors ``[N, z_dim]``, ``[N, classes]`` of stored gan parameters."""
        truncation = self.cfg.resolved_truncation()
        if any(p["truncation"] != truncation for p in params):
            raise ValueError(f"gan params drawn with another truncation than this generator's {truncation}")
        z = np.stack([truncated_normal(int(p["z_seed"]), self.z_dim, truncation) for p in params])
        y = np.stack([class_vector(self.num_classes, int(p["i"]), int(p["j"]), float(p["lam"])) for p in params])
        return z, y

    def generate(self, params: Sequence[Params]) -> Any:
        """Images of ``params`` as a uint8 NHWC tensor on the generator's device."""
        import torch

        if not params:
            return torch.zeros((0, *self.size, self.channels), dtype=torch.uint8, device=self.device)
        z, y = self.inputs(params)
        rows, batch = len(params), self.cfg.batch_size
        chunks = []
        with torch_threads(self.threads), torch.inference_mode():
            for start in range(0, rows, batch):
                stop = min(start + batch, rows)
                pad = np.r_[np.arange(start, stop), np.full(batch - (stop - start), stop - 1)]  # fixed shape
                zb = torch.from_numpy(z[pad]).to(self.device)
                yb = torch.from_numpy(y[pad]).to(self.device)
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    images = self.model(zb, yb)
                chunks.append(quantize(images.float(), self.size, self.channels)[: stop - start])
        return torch.cat(chunks)


_RUNNERS_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _runner(generator_json: str, source_json: str, device: str, threads: int) -> GeneratorRunner:
    source = load_source_cached(SourceConfig.model_validate_json(source_json), "train")
    return GeneratorRunner(GeneratorConfig.model_validate_json(generator_json), source, device=device,
                           threads=threads)


def cached_runner(generator: GeneratorConfig, source_cfg: SourceConfig, *, device: str = "cpu",
                  threads: int = 1) -> GeneratorRunner:
    """One runner per (generator, source, device, threads) and process: a PCA fit or a weights
    load happens once per worker, and concurrent shard calls wait for it."""
    with _RUNNERS_LOCK:  # the configs' JSON is the cache key
        return _runner(generator.model_dump_json(), source_cfg.model_dump_json(), device, threads)


def generate_images(cfg: GeneratorConfig, params: Sequence[Params], source_cfg: SourceConfig,
                    *, device: str = "cpu", threads: int = 1) -> np.ndarray:
    """Replay stored gan samples (the ``params`` of their ``.json``) to their stored pixels, with
    the resolved generator of the set (``index.json`` → ``config.set``). A ``factory`` generator
    runs the code it names: pass only configs you trust."""
    return cached_runner(cfg, source_cfg, device=device, threads=threads).generate(list(params)).cpu().numpy()
