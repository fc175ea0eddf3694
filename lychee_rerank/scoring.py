"""Turning (query, image) pairs into model inputs, and model outputs into p("yes").

The image path is the model card's: the decoded, sanitised image goes through qwen-vl-utils'
``fetch_image`` with its defaults, then the processor with the resolution setting. Each pair becomes
one *row* (prepared in a worker, reduced to model size at once); rows are collated into a left-padded
batch exactly as the processor pads a batch, and every processor output reaches the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .images import ImageError, ImageSize, ImageSource
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


@dataclass
class PreparedRow:
    """One pair's model inputs (batch dimension 1), image already at model size."""

    item: PlannedImage
    inputs: dict
    visual_tokens: int  # of the candidate image, as the processor made it
    model_size: tuple[int, int]  # (width, height) of the candidate image as the model sees it

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


class PairScorer:
    """Scores candidate images against one query with the Lychee recipe.

    ``prepare_row`` is CPU work (decoding, qwen-vl-utils, the processor) and runs in worker threads
    while ``forward`` runs the model on an earlier batch.
    """

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
    ):
        self.model = model
        self.processor = processor
        self.preprocess = preprocess
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        # The query image takes the model card's path once; every row then shares it.
        self.query, self.instruction = query, instruction
        self.query_image = None if query_image is None else model_card_image(query_image)
        self._query_pixels = None if self.query_image is None else processor_pixels(self.query_image)
        self.prompt = render_prompt(processor, query, instruction, with_query_image=query_image is not None)
        tokenizer = processor.tokenizer
        self.yes_id, self.no_id = (_single_token_id(tokenizer, w) for w in (YES_TOKEN, NO_TOKEN))
        self.patch_size = processor.image_processor.patch_size
        images_in_prompt = 1 + (query_image is not None)
        text_tokens = len(tokenizer(self.prompt, add_special_tokens=False)["input_ids"]) - images_in_prompt
        query_tokens = 0 if self.query_image is None else self._processor_tokens(*self.query_image.size)
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
        """Decode, reduce to model size and tokenise one pair. Raises ImageError or another
        exception for this image alone."""
        pixels = processor_pixels(model_card_image(item.source, reduce_to=self._draft_target(item.size)))
        images = [pixels] if self._query_pixels is None else [self._query_pixels, pixels]
        inputs = dict(
            self.processor(
                text=[self.prompt],
                images=[images],
                padding=True,
                return_tensors="pt",
                size=self.size,
                input_data_format="channels_first",
            )
        )
        del pixels, images  # the decoded pixels are not kept: only the model-size patches are
        # The forward casts to the model's dtype anyway; doing it here halves what waits in memory.
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        _, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][-1])
        merge = self.processor.image_processor.merge_size
        size = (grid_w * self.patch_size, grid_h * self.patch_size)
        return PreparedRow(item, inputs, grid_h * grid_w // merge**2, size)

    def collate(self, rows: list[PreparedRow]) -> dict:
        """One batch from rows, as the processor would pad it: left padding, every output kept."""
        if len(rows) == 1:
            batch = dict(rows[0].inputs)
        else:
            width = max(row.length for row in rows)
            pad_id = self.processor.tokenizer.pad_token_id
            batch = {}
            for key in rows[0].inputs:
                values = [row.inputs[key] for row in rows]
                if key in ("pixel_values", "image_grid_thw"):
                    batch[key] = torch.cat(values)
                elif values[0].dim() == 2 and values[0].shape[0] == 1:  # per-token: pad on the left
                    fill = pad_id if key == "input_ids" else 0
                    batch[key] = torch.cat([_left_pad(v, width, fill) for v in values])
                else:
                    raise ValueError(f"unexpected processor output {key!r}: cannot batch it")
        if self.device.type == "cuda":  # page-locked host memory: the copy to the GPU runs asynchronously
            batch = {k: v.pin_memory() if _on_cpu(v) else v for k, v in batch.items()}
        return batch

    # -- model ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def forward(self, batch: dict) -> list[float]:
        """p("yes") for each row of a collated batch, in batch order."""
        inputs = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        # Only the last position's logits are needed: never materialise the full-vocabulary logits.
        logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1, :]
        return yes_probability(logits, self.yes_id, self.no_id).tolist()


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
