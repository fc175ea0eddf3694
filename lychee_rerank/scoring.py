"""Turning (query, image) pairs into model inputs, and model outputs into p("yes").

The image path is the model card's: the decoded, sanitised image goes through qwen-vl-utils'
``fetch_image`` with its defaults, then the processor's image processor with the resolution setting.
Each pair becomes one *row* (prepared in a worker, reduced to model size at once): its tokens are
the prompt's, each ``<|image_pad|>`` repeated as many times as the image has visual tokens, exactly
as the processor builds them (tested bit for bit). Rows are collated into a left-padded batch as the
processor pads a batch, and every processor output reaches the model.

Images reach the language model as vision features: the forward runs the vision tower on the images
that have none yet (one call for the whole batch, as the model itself would: its attention is per
image through ``cu_seqlens``), then the model with ``mm_encoder_outputs``. So the query image goes
through the tower once per run, not once per row, and with a feature cache (``feature_cache``) an
image seen before comes with its features and is never decoded, preprocessed or encoded again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .feature_cache import Features, RunCache, content_digest
from .images import ImageError, ImageSize, ImageSource, read_bytes
from .preprocess import decoded_size, draft_target, model_card_image, model_card_size, processor_pixels
from .prompt import NO_TOKEN, YES_TOKEN, render_prompt

# Lychee-rerank-mm's training inputs were at most this many tokens (prompt, query and document).
TRAINED_INPUT_TOKENS = 3200


class QueryTooLongError(ValueError):
    """The query (text and query image) leaves no room for a candidate image; one sentence."""


@dataclass(frozen=True, eq=False)  # identity: each input is its own item, whatever its source
class PlannedImage:
    """An input image whose header has been read: known size and token cost, not yet decoded."""

    index: int
    name: str
    source: ImageSource
    size: ImageSize
    visual_tokens: int
    sequence_tokens: int  # prompt + query image + this image: the length of its row in a batch
    job: int = 0  # which run it belongs to, when several runs share forwards (Reranker.run_jobs)


@dataclass(eq=False)
class VisionInput:
    """One image on its way to the language model: its vision features, or until the forward has
    computed them, its model-size patches. ``key``: where the features go in the feature cache."""

    grid: torch.Tensor  # (1, 3): the image's row of image_grid_thw
    pixel_values: torch.Tensor | None = None
    features: torch.Tensor | None = None
    key: str | None = None


@dataclass
class PreparedRow:
    """One pair's model inputs (batch dimension 1), its images at model size or already encoded."""

    item: PlannedImage
    inputs: dict  # input_ids, attention_mask, mm_token_type_ids, image_grid_thw
    images: list[VisionInput]  # in prompt order: the query image (shared by every row), the candidate
    visual_tokens: int  # of the candidate image, as the processor made it
    model_size: tuple[int, int]  # (width, height) of the candidate image as the model sees it
    cached: bool | None = None  # features from the cache (True), computed (False), no cache (None)

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


@dataclass
class Batch:
    """Collated rows: the padded token inputs, and every image in token order."""

    inputs: dict
    images: list[VisionInput]


class PairScorer:
    """Scores candidate images against one query with the Lychee recipe.

    ``prepare_row`` is CPU work (decoding, qwen-vl-utils, the processor) and runs in worker threads
    while ``forward`` runs the model on an earlier batch. ``on_picture(item, picture)``, when set, is
    shown each image as the model card's path made it (upright, at model size) before it becomes
    patches: a front end's thumbnails then cost no decoding of their own.
    """

    on_picture: Callable[[PlannedImage, Image.Image], None] | None = None

    def __init__(
        self,
        model,
        processor,
        query: str,
        instruction: str | None,
        query_image: Image.Image | None,
        min_pixels: int,
        max_pixels: int,
        preprocess: str = "exact",
        cache: RunCache | None = None,
        query_image_bytes: bytes | None = None,
    ):
        """``cache``: the run's feature cache, or None; ``query_image_bytes``: the query image's
        encoded bytes, its cache key (without them it is encoded once per run, never stored)."""
        self.model = model
        self.processor = processor
        self.preprocess = preprocess
        self.cache = cache
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        self.query, self.instruction = query, instruction
        self.prompt = render_prompt(processor, query, instruction, with_query_image=query_image is not None)
        tokenizer = processor.tokenizer
        self.yes_id, self.no_id = (_single_token_id(tokenizer, w) for w in (YES_TOKEN, NO_TOKEN))
        self.patch_size = processor.image_processor.patch_size
        self.merge = processor.image_processor.merge_size
        # The prompt's tokens with one placeholder per image, and their modality types: each row
        # repeats the placeholders (see _row), as the processor expands them before tokenising.
        self.image_token_id = processor.image_token_id
        self._prompt_ids = tokenizer(self.prompt, return_tensors="pt")["input_ids"]
        self._prompt_types = torch.as_tensor(np.asarray(processor.create_mm_token_type_ids(self._prompt_ids)))
        # The query image takes the model card's path once; every row then shares it (and its features).
        self._query = None if query_image is None else self._vision_input(query_image, query_image_bytes, "query", None)[0]
        images_in_prompt = 1 + (query_image is not None)
        text_tokens = len(tokenizer(self.prompt, add_special_tokens=False)["input_ids"]) - images_in_prompt
        query_tokens = 0 if self._query is None else self._tokens(self._query.grid)
        self._base_tokens = text_tokens + query_tokens
        self.max_sequence_tokens = _max_positions(model.config)
        limit = min(TRAINED_INPUT_TOKENS, self.max_sequence_tokens)
        smallest_image = self._processor_tokens(1, 1)
        if self._base_tokens + smallest_image > limit:
            raise QueryTooLongError(self._too_long_message(tokenizer, query_tokens, limit))

    def _too_long_message(self, tokenizer, query_image_tokens: int, limit: int) -> str:
        """Names the part that is too long: the instruction, the query text or the query image."""
        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        parts = {"the instruction": count(self.instruction or ""), "the query": count(self.query or ""),
                 "the query image": query_image_tokens}
        longest = max(parts, key=parts.get)
        return (
            f"{longest} is too long: with the prompt the query takes {self._base_tokens:,} tokens ({longest} "
            f"{parts[longest]:,}), and the model was trained on inputs of at most {limit:,} tokens including "
            f"the image; shorten {'it' if longest != 'the query image' else 'the query or use a smaller query image'}"
        )

    # -- planning -------------------------------------------------------------------------------
    def _processor_tokens(self, width: int, height: int) -> int:
        """Visual tokens the processor makes of an image it is given at this size."""
        image_processor = self.processor.image_processor
        patches = image_processor.get_number_of_image_patches(
            height, width, {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        )
        return patches // image_processor.merge_size**2

    def visual_tokens(self, size: ImageSize) -> int:
        """Tokens the model will see for a decoded image of this size (qwen-vl-utils, then the processor)."""
        width, height = decoded_size(size, self._draft_target(size))
        return self._processor_tokens(*model_card_size(width, height))

    def _draft_target(self, size: ImageSize) -> tuple[int, int] | None:
        return draft_target(size, self.preprocess, self._target_size(size))

    def _target_size(self, size: ImageSize) -> tuple[int, int]:
        """The size the processor will resize this image to (width, height), from the exact path."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        width, height = model_card_size(size.width, size.height)
        factor = self.patch_size * self.processor.image_processor.merge_size
        h, w = smart_resize(height, width, factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return w, h

    def plan(self, index: int, name: str, source: ImageSource, size: ImageSize) -> PlannedImage:
        """Raises ImageError when the pair would not fit the model's positions."""
        tokens = self.visual_tokens(size)
        sequence = self._base_tokens + tokens
        if sequence > self.max_sequence_tokens:
            raise ImageError(
                f"at this resolution the image needs {tokens:,} tokens, more than the model's "
                f"{self.max_sequence_tokens:,} positions allow with the query; lower the resolution"
            )
        return PlannedImage(index, name, source, size, tokens, sequence)

    # -- preprocessing (worker threads) ---------------------------------------------------------
    def prepare_row(self, item: PlannedImage) -> PreparedRow:
        """Decode, reduce to model size and tokenise one pair -- or, for an image in the feature
        cache, only read its bytes and its features. Raises ImageError or another exception for this
        image alone."""
        # With a cache the file is read once: the bytes hashed are the bytes decoded.
        data = None if self.cache is None else read_bytes(item.source)
        source = item.source if data is None else data
        shown = None if self.on_picture is None else (lambda picture: self.on_picture(item, picture))
        image, cached = self._vision_input(source, data, "document", self._draft_target(item.size), shown)
        return self._row(item, image, cached)

    def _vision_input(self, source, data: bytes | None, kind: str, reduce_to, shown=None) -> tuple[VisionInput, bool | None]:
        """The image's features from the cache (True), else its patches, keyed for the cache when
        there is one (False) or not (None: no cache, or a decoded image without bytes to key on)."""
        key = None if self.cache is None or data is None else self.cache.key(content_digest(data), kind)
        found = None if key is None else self.cache.get(key)
        if found is not None:
            return VisionInput(found.grid, features=found.features), True
        image = self._patches(source, reduce_to, shown)
        image.key = key
        return image, None if key is None else False

    def _patches(self, source, reduce_to: tuple[int, int] | None, shown=None) -> VisionInput:
        """The model card's image path, then the image processor: the model-size patches and grid.
        ``shown(picture)``: the picture before it becomes patches (PairScorer.on_picture)."""
        picture = model_card_image(source, reduce_to=reduce_to)
        if shown is not None:
            shown(picture)
        pixels = processor_pixels(picture)
        del picture
        out = self.processor.image_processor(
            images=[pixels], size=self.size, input_data_format="channels_first", return_tensors="pt"
        )
        del pixels  # the decoded pixels are not kept: only the model-size patches are
        # The forward casts to the model's dtype anyway; doing it here halves what waits in memory.
        return VisionInput(out["image_grid_thw"], pixel_values=out["pixel_values"].to(self.model.dtype))

    def close(self) -> None:
        """Wait for the feature cache's writes (nothing to do without a cache)."""
        if self.cache is not None:
            self.cache.close()

    def _tokens(self, grid: torch.Tensor) -> int:
        return int(grid.prod()) // self.merge**2

    def _row(self, item: PlannedImage, image: VisionInput, cached: bool | None) -> PreparedRow:
        """The pair's inputs as the processor makes them: each image placeholder repeated once per
        visual token of its image, and the modality types (text 0, image 1) repeated alike."""
        images = [image] if self._query is None else [self._query, image]
        grid = torch.cat([i.grid for i in images])
        repeats = torch.ones(self._prompt_ids.shape[1], dtype=torch.long)
        repeats[(self._prompt_ids[0] == self.image_token_id).nonzero().flatten()] = grid.prod(-1) // self.merge**2
        input_ids = self._prompt_ids.repeat_interleave(repeats, dim=1)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": self._prompt_types.repeat_interleave(repeats, dim=1),
            "image_grid_thw": grid,
        }
        _, grid_h, grid_w = (int(v) for v in image.grid[0])
        size = (grid_w * self.patch_size, grid_h * self.patch_size)
        return PreparedRow(item, inputs, images, self._tokens(image.grid), size, cached)

    def collate(self, rows: list[PreparedRow]) -> Batch:
        """One batch from rows, as the processor would pad it: left padding, every output kept."""
        if len(rows) == 1:
            inputs = dict(rows[0].inputs)
        else:
            width = max(row.length for row in rows)
            pad_id = self.processor.tokenizer.pad_token_id
            inputs = {}
            for key in rows[0].inputs:
                values = [row.inputs[key] for row in rows]
                if key == "image_grid_thw":
                    inputs[key] = torch.cat(values)
                elif values[0].dim() == 2 and values[0].shape[0] == 1:  # per-token: pad on the left
                    fill = pad_id if key == "input_ids" else 0
                    inputs[key] = torch.cat([_left_pad(v, width, fill) for v in values])
                else:
                    raise ValueError(f"unexpected processor output {key!r}: cannot batch it")
        if self.device.type == "cuda":  # page-locked host memory: the copy to the GPU runs asynchronously
            inputs = {k: v.pin_memory() if _on_cpu(v) else v for k, v in inputs.items()}
        return Batch(inputs, [image for row in rows for image in row.images])

    # -- model ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def forward(self, batch: Batch) -> list[float]:
        """p("yes") for each row of a collated batch, in batch order."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        computed = self._encode([image for image in dict.fromkeys(batch.images) if image.features is None])
        inputs = {k: self._to_device(v) for k, v in batch.inputs.items()}
        features = tuple(self._to_device(image.features) for image in batch.images)
        # Only the last position's logits are needed: never materialise the full-vocabulary logits.
        logits = self.model(
            **inputs, mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
            use_cache=False, logits_to_keep=1,
        ).logits[:, -1, :]
        scores = yes_probability(logits, self.yes_id, self.no_id).tolist()
        if self.cache is not None:  # after the scores: the device is idle, the copies are quick
            for image in computed:
                if image.key is not None:
                    self.cache.put_later(image.key, Features(image.features.cpu(), image.grid))
        return scores

    def _encode(self, images: list[VisionInput]) -> list[VisionInput]:
        """Run the vision tower on these images, in one call as the model itself would (its attention
        is per image: the same computation whether images go alone or together); each keeps its
        features, so a batch retried after running out of memory does not encode it again."""
        if not images:
            return images
        grid = torch.cat([image.grid for image in images])
        pixels = torch.cat([image.pixel_values for image in images])
        out = self.model.get_image_features(self._to_device(pixels), self._to_device(grid), return_dict=True)
        for image, features in zip(images, out.pooler_output):
            image.features, image.pixel_values = features, None
        return images

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == self.device:
            return tensor
        if self.device.type == "cuda" and _on_cpu(tensor) and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)


def _on_cpu(value) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cpu"


def _left_pad(tensor: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    return torch.cat([tensor.new_full((1, missing), fill), tensor], dim=1)


def _max_positions(config) -> int:
    text = getattr(config, "text_config", config)
    return int(getattr(text, "max_position_embeddings", None) or 128_000)


def yes_probability(last_logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """Softmax over the ("no", "yes") logits of the answer position; returns p("yes")."""
    pair = last_logits[:, [no_id, yes_id]].float()
    return torch.softmax(pair, dim=-1)[:, 1].cpu()


def _single_token_id(tokenizer, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the model's tokenizer splits {word!r} into {len(ids)} tokens; it is not a Lychee reranker")
    return ids[0]
