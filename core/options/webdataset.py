"""The ``webdataset`` keys of ``source``, which :class:`core.config.SourceConfig` inherits: the
tar shards of both splits, the member extensions that hold a sample's image and class, and the
class names. Only ``kind: webdataset`` may set them."""

from __future__ import annotations

from pydantic import Field

from core.options.train import Strict

WEBDATASET_IMAGE_EXT = "jpg;jpeg;png;webp"
WEBDATASET_KEYS = ("urls", "test_urls", "image_ext", "label_ext", "class_names")


class WebDatasetKeys(Strict):
    urls: str | list[str] | None = Field(None, description="webdataset: train tar shards (list or brace pattern)")
    test_urls: str | list[str] | None = Field(None, description="webdataset: test tar shards (list or brace pattern)")
    image_ext: str = Field(WEBDATASET_IMAGE_EXT,
                           description="webdataset: image extensions, ';'-separated; a sample's first one is used")
    label_ext: str = Field("cls", description="webdataset: extension of the ASCII integer class member")
    class_names: list[str] | None = Field(None, description="webdataset: class names (default '0'..'K-1')")

    def unused_webdataset_keys(self) -> set[str]:
        """The webdataset keys of another kind: left out of stored specs and indexes, whose bytes
        stay those of jobs made before the keys existed."""
        return set() if getattr(self, "kind", None) == "webdataset" else set(WEBDATASET_KEYS)

    def check_webdataset_keys(self) -> None:
        """Raise ValueError (a config error) for webdataset keys that are missing, empty or misplaced."""
        kind, path = getattr(self, "kind", None), getattr(self, "path", None)
        own = sorted(k for k in WEBDATASET_KEYS if k in self.model_fields_set
                     and getattr(self, k) != type(self).model_fields[k].default)
        if kind != "webdataset":
            if own:
                raise ValueError(f"source {own} apply to kind 'webdataset' only, not {kind!r}")
            return
        if path is not None:
            raise ValueError("source.kind 'webdataset' reads urls and test_urls, not path")
        for name in ("urls", "test_urls"):
            value = getattr(self, name)
            if value is None:
                example = f"data/{'train' if name == 'urls' else 'test'}-{{000000..000009}}.tar"
                raise ValueError(f"source.kind 'webdataset' needs source.{name} (tar shards: a list or a brace "
                                 f"pattern such as {example})")
            if not value or any(not str(url).strip() for url in ([value] if isinstance(value, str) else value)):
                raise ValueError(f"source.{name} is empty; list the tar shards")
        if not any(part.strip() for part in self.image_ext.split(";")) or not self.label_ext.strip():
            raise ValueError("source.image_ext and source.label_ext must name extensions, e.g. 'jpg;png' and 'cls'")
        if self.class_names is not None and (not self.class_names or len(set(self.class_names)) !=
                                             len(self.class_names)):
            raise ValueError("source.class_names must list each class once")
