"""The baseline: the Lychee-rerank-mm model card's code, run the way an outside user runs it.

One image at a time, in one Python thread (torch keeps its own intra-op threads for the forward, as
it would for that user): open the file with PIL and turn it upright by its EXIF orientation, build
the chat messages, qwen-vl-utils' ``process_vision_info``, the processor (loaded with the model
card's ``min_pixels=4*28*28`` and the bench's ``max_pixels``), ``model(**inputs)`` untouched, and a
softmax over the "no"/"yes" logits of the last position.

It deliberately shares nothing with the engine (its own prompt text, messages and processor): it is
the reference the engine's speed and scores are compared with, in the same process, on the same files.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

MIN_PIXELS = 4 * 28 * 28
INSTRUCTION = "Given a search query, retrieve relevant images that match the query."
SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
STAGES = ("decode", "qwen_vl_utils", "processor", "forward")


@dataclass
class BaselineRun:
    scores: list[float]
    elapsed_s: float
    cpu_s: float
    stage_s: dict[str, float] = field(default_factory=dict)  # summed over the images


class ModelCardLoop:
    def __init__(self, model, processor_source: str, max_pixels: int):
        from transformers import AutoProcessor

        self.model = model
        self.processor = AutoProcessor.from_pretrained(processor_source, min_pixels=MIN_PIXELS, max_pixels=max_pixels)
        tokenizer = self.processor.tokenizer
        self.yes_id = tokenizer.convert_tokens_to_ids("yes")
        self.no_id = tokenizer.convert_tokens_to_ids("no")

    @staticmethod
    def messages(query: str, image) -> list[dict]:
        return [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<Instruct>: " + INSTRUCTION},
                    {"type": "text", "text": "<Query>:"},
                    {"type": "text", "text": query},
                    {"type": "text", "text": "\n<Document>:"},
                    {"type": "image", "image": image},
                ],
            },
        ]

    def score(self, query: str, path: str, stage_s: dict[str, float]) -> float:
        import torch
        from PIL import Image, ImageOps
        from qwen_vl_utils import process_vision_info

        start = time.perf_counter()
        image = ImageOps.exif_transpose(Image.open(path))  # decodes the file
        decoded = time.perf_counter()
        messages = self.messages(query, image)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        image_inputs, video_inputs = process_vision_info(messages)
        fetched = time.perf_counter()
        with warnings.catch_warnings():  # transformers deprecates the model card's min/max_pixels: not news here
            warnings.simplefilter("ignore", FutureWarning)
            inputs = self.processor(text=[text], images=image_inputs, videos=video_inputs, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        processed = time.perf_counter()
        with torch.no_grad():
            logits = self.model(**inputs).logits[:, -1, :]
        pair = torch.stack([logits[:, self.no_id], logits[:, self.yes_id]], dim=1).float()
        score = torch.softmax(pair, dim=1)[0, 1].item()  # .item() waits for the device
        done = time.perf_counter()
        for stage, seconds in zip(STAGES, (decoded - start, fetched - decoded, processed - fetched, done - processed)):
            stage_s[stage] = stage_s.get(stage, 0.0) + seconds
        return score

    def run(self, query: str, paths: list[str]) -> BaselineRun:
        stage_s: dict[str, float] = {}
        cpu, start = time.process_time(), time.perf_counter()
        scores = [self.score(query, path, stage_s) for path in paths]
        return BaselineRun(scores, time.perf_counter() - start, time.process_time() - cpu, stage_s)
