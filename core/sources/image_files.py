"""Opening one image file (a path, an fsspec URL or a member of a tar) for the readers: its size
from the header alone, or its decoded pixels; a file that cannot be opened is one user error
naming it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import UserError, clip
from core.sources.webdataset import TarMember
from core.store import storage


def _open_image(path: str | Path | TarMember) -> Any:
    """A file object of the image's bytes: the file, or the member's byte range of its tar."""
    return io.BytesIO(path.read()) if isinstance(path, TarMember) else storage.open_read(path)


# What opening an image may raise for a bad file: PIL's DecompressionBombError (an image header
# claiming more than twice PIL's MAX_IMAGE_PIXELS, ~179 megapixels) is no OSError, and would
# otherwise escape as a traceback from the header check or mid-set from a worker.
UNREADABLE = (OSError, UnidentifiedImageError, Image.DecompressionBombError)


def unreadable(path: str | Path | TarMember, err: BaseException) -> UserError:
    """The one line naming an image file that cannot be opened, and why."""
    if isinstance(err, UnidentifiedImageError):
        reason = "not an image file PIL can read"
    elif isinstance(err, Image.DecompressionBombError):
        reason = f"{err} (PIL's decompression-bomb limit)"
    else:
        reason = str(err)
    return UserError(f"image {path}: unreadable ({clip(reason)}); remove or replace the file")


def image_size(path: str | Path | TarMember) -> tuple[int, int]:
    """(height, width) from an image's header, without decoding its pixels."""
    try:
        with _open_image(path) as handle, Image.open(handle) as pil:
            width, height = pil.size
    except UNREADABLE as err:
        raise unreadable(path, err) from err
    return (int(height), int(width))


def open_pil(path: str | Path | TarMember, channels: int) -> Image.Image:
    """The decoded image as a PIL image of ``channels`` channels (``L`` or ``RGB``)."""
    try:
        with _open_image(path) as handle, Image.open(handle) as pil:
            pil.load()
            return pil.convert("L" if channels == 1 else "RGB")
    except UNREADABLE as err:
        raise unreadable(path, err) from err


def read_image(path: str | Path | TarMember, channels: int) -> np.ndarray:
    array = np.asarray(open_pil(path, channels))
    return array[:, :, None] if array.ndim == 2 else array
