"""Turning (query, images) into model inputs and model outputs into p("yes")."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from .images import ImageError, ImageSize, ImageSource, load_image
from .prompt import NO_TOKEN, YES_TOKEN, render_prompt


@dataclass(frozen=True)
class PlannedImage:
    """An input image whose header has been read: known size and token cost, not yet decoded."""

    index: int
    name: str
    source: ImageSource
    size: ImageSize
    visual_tokens: int
    sequence_tokens: int  # prompt + query image + this image: the length of its row in a batch


@dataclass
class PreparedBatch:
    """Model inputs for the images of one batch that decoded; those that did not, with the reason."""

    items: list[PlannedImage]
    inputs: dict | None
    failures: list[tuple[PlannedImage, str]] = field(default_factory=list)

    @property
    def padded_tokens(self) -> int:
        return len(self.items) * max((i.sequence_tokens for i in self.items), default=0)

    def release(self) -> None:
        self.inputs = None


class PairScorer:
    """Scores candidate images against one query with the Lychee recipe.

    ``prepare`` is CPU work (decoding, the processor) and runs in a worker thread while ``forward``
    runs the model on the previous batch.
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
    ):
        self.model = model
        self.processor = processor
        self.query_image = query_image
        self.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        self.prompt = render_prompt(processor, query, instruction, with_query_image=query_image is not None)
        tokenizer = processor.tokenizer
        self.yes_id, self.no_id = (_single_token_id(tokenizer, w) for w in (YES_TOKEN, NO_TOKEN))
        images_in_prompt = 1 + (query_image is not None)
        text_tokens = len(tokenizer(self.prompt, add_special_tokens=False)["input_ids"]) - images_in_prompt
        query_tokens = 0 if query_image is None else self.visual_tokens(ImageSize(*query_image.size))
        self._base_tokens = text_tokens + query_tokens

    # -- planning -------------------------------------------------------------------------------
    def visual_tokens(self, size: ImageSize) -> int:
        """Tokens the processor will make of an image this size (its own resize rule)."""
        image_processor = self.processor.image_processor
        patches = image_processor.get_number_of_image_patches(
            size.height,
            size.width,
            {"min_pixels": self.size["shortest_edge"], "max_pixels": self.size["longest_edge"]},
        )
        return patches // image_processor.merge_size**2

    def plan(self, index: int, name: str, source: ImageSource, size: ImageSize) -> PlannedImage:
        tokens = self.visual_tokens(size)
        return PlannedImage(index, name, source, size, tokens, self._base_tokens + tokens)

    # -- preprocessing (worker thread) ----------------------------------------------------------
    def prepare(self, items: list[PlannedImage]) -> PreparedBatch:
        ok: list[PlannedImage] = []
        images: list[Image.Image] = []
        failures: list[tuple[PlannedImage, str]] = []
        for item in items:
            try:
                image = load_image(item.source)
            except ImageError as exc:
                failures.append((item, str(exc)))
                continue
            ok.append(item)
            images.append(image)
        if not ok:
            return PreparedBatch([], None, failures)
        try:
            inputs = self._process(images)
        except Exception as exc:
            if len(ok) == 1:
                return PreparedBatch([], None, failures + [(ok[0], f"the image could not be preprocessed ({exc})")])
            # Find the culprit: each image alone, so one odd image cannot fail the others.
            parts = [self.prepare([item]) for item in ok]
            good = [p for p in parts if p.items]
            if not good:
                return PreparedBatch([], None, failures + [f for p in parts for f in p.failures])
            failures += [f for p in parts for f in p.failures]
            ok = [p.items[0] for p in good]
            inputs = self._process([load_image(item.source) for item in ok])
        if self.device.type == "cuda":
            inputs = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return PreparedBatch(ok, inputs, failures)

    def _process(self, images: list[Image.Image]) -> dict:
        per_row = [[self.query_image, image] if self.query_image is not None else [image] for image in images]
        inputs = self.processor(
            text=[self.prompt] * len(images),
            images=per_row,
            padding=True,
            return_tensors="pt",
            size=self.size,
        )
        inputs = dict(inputs)
        inputs.pop("mm_token_type_ids", None)  # not a model input for image-only prompts
        return inputs

    # -- model ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def forward(self, batch: PreparedBatch) -> list[float]:
        """p("yes") for each image of the batch, in batch order."""
        inputs = {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.inputs.items()
        }
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        # Only the last position's logits are needed: never materialise the full-vocabulary logits.
        logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1, :]
        return yes_probability(logits, self.yes_id, self.no_id).tolist()


def yes_probability(last_logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """Softmax over the ("no", "yes") logits of the answer position; returns p("yes")."""
    pair = last_logits[:, [no_id, yes_id]].float()
    return torch.softmax(pair, dim=-1)[:, 1].cpu()


def _single_token_id(tokenizer, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the model's tokenizer splits {word!r} into {len(ids)} tokens; it is not a Lychee reranker")
    return ids[0]
