"""Lychee-rerank-mm scored the way its model card does it, written as an outside user would.

It shares nothing with ``lychee_rerank``: its own prompt, ``apply_chat_template``, qwen-vl-utils'
``process_vision_info``, the processor loaded with the model card's pixel bounds and left padding,
``model(**inputs)`` with every processor output untouched, and a softmax over the no/yes logits of
the last position. The one step the model card does not show, and the product documents, is that
files are opened with PIL and turned upright by their EXIF orientation first.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageOps
from qwen_vl_utils import process_vision_info
from transformers import AutoModelForImageTextToText, AutoProcessor

MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 1280 * 28 * 28
INSTRUCTION = "Given a search query, retrieve relevant images that match the query."
SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)


class ModelCardScorer:
    def __init__(self, path: str, max_pixels: int = MAX_PIXELS):
        self.processor = AutoProcessor.from_pretrained(
            path, min_pixels=MIN_PIXELS, max_pixels=max_pixels, padding_side="left"
        )
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
        tokenizer = self.processor.tokenizer
        self.yes = tokenizer.convert_tokens_to_ids("yes")
        self.no = tokenizer.convert_tokens_to_ids("no")

    @staticmethod
    def _picture(image):
        if isinstance(image, Image.Image):
            return image
        return ImageOps.exif_transpose(Image.open(image))

    def messages(self, query, image, query_image=None, instruction=INSTRUCTION):
        content = [{"type": "text", "text": "<Instruct>: " + instruction}, {"type": "text", "text": "<Query>:"}]
        if query_image is not None:
            content.append({"type": "image", "image": self._picture(query_image)})
        if query:
            content.append({"type": "text", "text": query})
        content.append({"type": "text", "text": "\n<Document>:"})
        content.append({"type": "image", "image": self._picture(image)})
        return [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": content},
        ]

    @torch.no_grad()
    def scores(self, query, images, query_image=None, instruction=INSTRUCTION, batch_size=4):
        """p(yes) per image, in batches of ``batch_size`` left-padded pairs, as the model card batches."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = [self.messages(query, im, query_image, instruction) for im in images[start : start + batch_size]]
            texts = [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
            image_inputs, video_inputs = process_vision_info(batch)
            inputs = self.processor(text=texts, images=image_inputs, videos=video_inputs, padding=True, return_tensors="pt")
            logits = self.model(**inputs).logits[:, -1, :]
            pair = torch.stack([logits[:, self.no], logits[:, self.yes]], dim=1)
            out += torch.softmax(pair, dim=1)[:, 1].tolist()
        return out
