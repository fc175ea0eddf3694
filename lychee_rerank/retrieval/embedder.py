"""The first stage's model: a dual image–text encoder (SigLIP 2 by default) that turns each image,
and each query, into one unit vector; similarity is their dot product.

Loaded like the reranker (``loading.resolve_source``): a hub id, a local directory or ``demo``,
through transformers' Auto classes (``AutoModel``, ``AutoProcessor``), never with remote code. Any
checkpoint whose model has ``get_image_features`` / ``get_text_features`` works (SigLIP 2 NaFlex or
fixed resolution, SigLIP, CLIP); why SigLIP 2 base NaFlex is the default: docs/index.md.

Images go the engine's way: ``images.load_image`` decodes (EXIF orientation, transparency, strips),
JPEGs at the smallest DCT scale still at least the size the embedder sees (a few hundred pixels: a
12-MP photo decodes at 1/8), then the checkpoint's own processor resizes and normalises.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..images import ImageSource, load_image, probe_image
from ..loading import ModelLoadError, describe_load_failure, hub_check, resolve_dtype, resolve_source
from .demo_embedder import ensure_demo_embedder, is_demo_embedder

DEFAULT_EMBEDDER = "google/siglip2-base-patch16-naflex"
EMBEDDER_ENV = "LYCHEE_EMBEDDER"


def default_embedder() -> str:
    """The embedder named by $LYCHEE_EMBEDDER, else SigLIP 2 base NaFlex."""
    return os.environ.get(EMBEDDER_ENV, "").strip() or DEFAULT_EMBEDDER


@dataclass(frozen=True)
class EmbedderInfo:
    name: str  # as asked for: hub id, directory or "demo"
    path: str  # what from_pretrained was given
    device: str
    dtype: str
    dim: int  # the vectors' width
    is_demo: bool
    load_seconds: float

    def summary(self) -> str:
        return f"embedder {self.name} on {self.device}, {self.dtype}, {self.dim}-d vectors"


class Embedder:
    """A loaded embedder. ``prepare`` is thread-safe (worker threads); ``embed_prepared`` and the
    query methods run one forward at a time."""

    def __init__(self, model, processor, info: EmbedderInfo):
        self.model = model
        self.processor = processor
        self.info = info
        self._forward = threading.Lock()
        self.forwards = 0  # image forwards run (tests count them: an update embeds only what changed)
        self.images_embedded = 0

    @classmethod
    def load(cls, name: str | None = None, *, dtype: str = "auto", device: str | None = None) -> "Embedder":
        """Load by hub id, directory or 'demo' (default: $LYCHEE_EMBEDDER or SigLIP 2 base NaFlex).
        Raises ModelLoadError with one sentence."""
        import torch
        from transformers import AutoModel, AutoProcessor

        name = (name or "").strip() or default_embedder()
        start = time.perf_counter()
        source = resolve_source(name, demo=ensure_demo_embedder)
        torch_dtype = resolve_dtype(dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        local_only = False if os.path.isdir(source) else hub_check(source)
        try:
            processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
            model = AutoModel.from_pretrained(source, dtype=torch_dtype, local_files_only=local_only)
        except Exception as exc:  # every failure becomes one sentence for the user
            raise ModelLoadError(describe_load_failure(name, exc)) from exc
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ModelLoadError(f"{name} is not an image-text embedder (a SigLIP 2, SigLIP or CLIP checkpoint)")
        model = model.to(device).eval()
        info = EmbedderInfo(
            name=name,
            path=source,
            device=str(device),
            dtype=str(torch_dtype).removeprefix("torch."),
            dim=_width(model.config),
            is_demo=os.path.isdir(source) and is_demo_embedder(source),
            load_seconds=time.perf_counter() - start,
        )
        return cls(model, processor, info)

    # -- images -----------------------------------------------------------------------------------
    def model_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the processor resizes an image of this size to: what JPEG draft decoding
        may reduce to without losing a pixel the embedder sees."""
        images = self.processor.image_processor
        patches = getattr(images, "max_num_patches", None)
        if patches:  # NaFlex: the aspect ratio kept, at most max_num_patches patches
            from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

            h, w = get_image_size_for_max_num_patches(height, width, images.patch_size, patches)
            return w, h
        size = images.size
        if "height" in size:
            return size["width"], size["height"]
        side = size.get("shortest_edge") or size.get("longest_edge")  # CLIP: shortest edge, then a crop
        scale = side / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def prepare(self, source: ImageSource) -> dict:
        """One image as the model's inputs (a batch of one); ImageError when it cannot be decoded."""
        size = probe_image(source)
        picture = load_image(source, reduce_to=self.model_size(size.width, size.height))
        return dict(self.processor(images=[picture], return_tensors="pt"))

    def embed_prepared(self, rows: Sequence[dict]) -> np.ndarray:
        """Unit vectors (float32, one row per image) for prepared images, in one forward."""
        import torch

        batch = {key: torch.cat([row[key] for row in rows]) for key in rows[0]}
        with self._forward:
            vectors = self._features(self.model.get_image_features, batch)
            self.forwards += 1
            self.images_embedded += len(rows)
        return vectors

    def embed_images(self, sources: Sequence[ImageSource]) -> np.ndarray:
        return self.embed_prepared([self.prepare(source) for source in sources])

    # -- queries ----------------------------------------------------------------------------------
    def embed_text(self, text: str) -> np.ndarray:
        """The query text's unit vector (the processor's own padding and truncation, as trained)."""
        inputs = dict(self.processor(text=[text], return_tensors="pt"))
        inputs.pop("token_type_ids", None)
        with self._forward:
            return self._features(self.model.get_text_features, inputs)[0]

    def embed_query(self, text: str | None = None, image: ImageSource | None = None) -> np.ndarray:
        """A query's unit vector: the text's, the image's, or for both the normalised sum of the
        two unit vectors (the direction halfway between them: each counts as much)."""
        parts = []
        if text and text.strip():
            parts.append(self.embed_text(text))
        if image is not None:
            parts.append(self.embed_images([image])[0])
        if not parts:
            raise ValueError("a query needs text, an image, or both")
        return _unit(np.sum(parts, axis=0))

    def _features(self, method, inputs: dict) -> np.ndarray:
        import torch

        device, dtype = self.model.device, self.model.dtype
        inputs = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
        with torch.inference_mode():
            output = method(**inputs)
        features = getattr(output, "pooler_output", output)  # transformers 5: an output object
        return _unit(features.float().cpu().numpy())


def embedder_width(name: str) -> int:
    """The width of an embedder's vectors, read from its config alone (no weights loaded): what a
    new index needs when the embedding runs elsewhere (Ray replicas)."""
    from transformers import AutoConfig

    source = resolve_source(name, demo=ensure_demo_embedder)
    local_only = False if os.path.isdir(source) else hub_check(source)
    try:
        return _width(AutoConfig.from_pretrained(source, local_files_only=local_only))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(describe_load_failure(name, exc)) from exc


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _width(config) -> int:
    for part in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        for key in ("projection_dim", "projection_size", "hidden_size"):
            value = getattr(part, key, None) if part is not None else None
            if value:
                return int(value)
    raise ModelLoadError("cannot tell the width of this embedder's vectors from its config")
