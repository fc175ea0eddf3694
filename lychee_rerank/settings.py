"""A run's settings: one object, built once by each front end (CLI, app, Python API, service), handed
whole to every back end (this process, Ray replicas, anything later), recorded whole in every output.

No path picks options by hand: a Ray replica once rebuilt its own ``Reranker.load(model, dtype=...)``
and passed a subset of the options, silently dropping the quantisation and the preprocessing. Here a
back end gets the ``RunSettings`` and nothing else, and ``Reranker.run`` refuses settings made for
another model than the one it holds.

Everything is checked when the object is built (``InputError``, one sentence), before any model
loads: the choices, the resolution, the query and instruction text, the query image (decoded once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from dataclasses import dataclass, field

from .checks import InputError, check_pixels, check_query, check_text, load_query_image
from .execution import MODES
from .images import ImageSource, source_name
from .loading import ATTENTIONS, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DTYPES, default_model
from .preprocess import PREPROCESS_MODES
from .prompt import DEFAULT_INSTRUCTION
from .quantization import QUANTIZE_MODES


def _choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class ModelSettings:
    """What is loaded: the weights every score comes from."""

    name: str  # hub id, local directory or "demo"
    dtype: str = "auto"
    quantize: str = "auto"
    attention: str = "auto"

    @classmethod
    def build(
        cls, name: str | None = None, *, dtype: str = "auto", quantize: str = "auto", attention: str = "auto"
    ) -> "ModelSettings":
        """Checked settings; no name means $LYCHEE_MODEL or the real model."""
        name = (name or "").strip() or default_model()
        check_text("the model name", name)
        return cls(
            name,
            _choice("dtype", dtype, DTYPES),
            _choice("quantisation", quantize, QUANTIZE_MODES),
            _choice("attention", attention, ATTENTIONS),
        )

    def record(self) -> dict:
        return {"model": self.name, "dtype": self.dtype, "quantize": self.quantize, "attention": self.attention}


@dataclass(frozen=True)
class QueryImage:
    """The query image as encoded bytes: small, picklable (Ray replicas may run where the file is not),
    and identified by its content."""

    data: bytes = field(repr=False)
    name: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class RunSettings:
    """Everything a run's scores depend on, and how it executes."""

    query: str
    model: ModelSettings
    instruction: str = DEFAULT_INSTRUCTION
    query_image: QueryImage | None = None
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    preprocess: str = "exact"  # "exact" (the model card's image path) or "fast" (JPEG draft decoding)
    mode: str = "auto"  # "auto", "batched" or "sequential": same scores, different memory and speed
    workers: int | None = None  # preprocessing threads (default: the CPUs this process may use)
    token_budget: int | None = None  # tokens per forward (default: from the free device memory)
    # The vision-feature cache's folder, or None: off (lychee_rerank.feature_cache). Execution only:
    # the same scores with or without it.
    cache_dir: str | None = None

    @classmethod
    def build(
        cls,
        query: str | None = "",
        *,
        model: ModelSettings | str | None = None,
        dtype: str = "auto",
        quantize: str = "auto",
        attention: str = "auto",
        instruction: str | None = None,
        query_image: ImageSource | QueryImage | None = None,
        query_image_name: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        preprocess: str = "exact",
        mode: str = "auto",
        workers: int | None = None,
        token_budget: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> "RunSettings":
        """Checked settings, or InputError with one sentence. ``model`` is a ModelSettings, or a
        name that ``dtype``/``quantize``/``attention`` complete. A query image given as a path, a
        file object or a decoded image is checked (it must decode) and kept as bytes."""
        if not isinstance(model, ModelSettings):
            model = ModelSettings.build(model, dtype=dtype, quantize=quantize, attention=attention)
        picture = _query_image(query_image, query_image_name)
        query = check_query(query, picture is not None)
        check_text("the query", query)
        instruction = (instruction or "").strip() or DEFAULT_INSTRUCTION
        check_text("the instruction", instruction)
        min_pixels = DEFAULT_MIN_PIXELS if min_pixels is None else int(min_pixels)
        max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
        check_pixels(min_pixels, max_pixels)
        if workers is not None and workers < 1:
            raise InputError(f"workers must be at least 1, not {workers}")
        if token_budget is not None and token_budget < 1:
            raise InputError(f"the token budget must be at least 1, not {token_budget}")
        return cls(
            query=query,
            model=model,
            instruction=instruction,
            query_image=picture,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            preprocess=_choice("preprocessing", preprocess, PREPROCESS_MODES),
            mode=_choice("mode", mode, MODES),
            workers=workers,
            token_budget=token_budget,
            cache_dir=_cache_dir(cache_dir),
        )

    def replace(self, **changes) -> "RunSettings":
        """A copy with some fields changed (checked again)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(changes)
        return RunSettings.build(fields.pop("query"), **fields)

    def scoring_key(self) -> dict:
        """The fields the scores depend on (not how the run executes): results made under one key
        may be kept, merged or resumed under the same key only."""
        return {
            "query": self.query,
            "instruction": self.instruction,
            "query_image_sha256": None if self.query_image is None else self.query_image.sha256,
            **self.model.record(),
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "preprocess": self.preprocess,
        }

    def changes(self, other: "RunSettings") -> list[str]:
        """What differs from ``other`` in what decides the scores, in words a page can name: "query",
        "query_image", "instruction", "model", "resolution", "preprocess"."""
        mine, theirs = self.scoring_key(), other.scoring_key()
        named = [_CHANGE_NAMES.get(key, key) for key in mine if mine[key] != theirs[key]]
        return list(dict.fromkeys(named))

    def record(self) -> dict:
        """The whole object, JSON-safe: what every output's metadata holds."""
        return {
            **self.scoring_key(),
            "query_image": None if self.query_image is None else self.query_image.name,
            "mode": self.mode,
            "workers": self.workers,
            "token_budget": self.token_budget,
            "cache_dir": self.cache_dir,
        }


_CHANGE_NAMES = {
    "query_image_sha256": "query_image",
    "dtype": "model",
    "quantize": "model",
    "attention": "model",
    "min_pixels": "resolution",
    "max_pixels": "resolution",
}


def _cache_dir(path: str | os.PathLike | None) -> str | None:
    """The feature cache's folder, absolute (created, and checked to be usable, when a run opens it:
    on Ray, where the replicas run)."""
    if path is None:
        return None
    text = os.fspath(path).strip()
    if not text:
        raise InputError("the feature cache folder is empty; name a folder, or turn the cache off")
    check_text("the feature cache folder", text)
    return os.path.abspath(os.path.expanduser(text))


def _query_image(source: ImageSource | QueryImage | None, name: str | None) -> QueryImage | None:
    """The query image as checked bytes; InputError (one sentence) when it cannot be used."""
    if source is None or isinstance(source, QueryImage):
        return source
    from PIL import Image

    shown = name or source_name(source, 0)
    if shown == "image 1":
        shown = "query image"
    if isinstance(source, (str, os.PathLike)):
        load_query_image(source)  # decodes: an unusable image is refused before any model loads
        try:
            with open(source, "rb") as file:
                return QueryImage(file.read(), shown)
        except OSError as exc:
            raise InputError(f"the query image cannot be read ({exc.strerror or exc})") from None
    if isinstance(source, Image.Image):
        # A decoded image travels losslessly, already upright: the pixels the engine would use.
        buffer = io.BytesIO()
        load_query_image(source).save(buffer, format="PNG")
        return QueryImage(buffer.getvalue(), shown)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = bytes(source.getvalue() if hasattr(source, "getvalue") else source.read())
        except (OSError, ValueError) as exc:
            raise InputError(f"the query image cannot be read ({exc})") from None
    load_query_image(data)
    return QueryImage(data, shown)
