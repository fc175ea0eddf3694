"""The Lychee-rerank-mm scoring prompt: the one place that knows what the model was trained on."""

from __future__ import annotations

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant images that match the query."
YES_TOKEN = "yes"
NO_TOKEN = "no"


def build_messages(query: str, instruction: str | None = None, with_query_image: bool = False) -> list[dict]:
    """Chat messages for one (query, candidate image) pair.

    Image entries are placeholders: the processor receives the images themselves, in the order they
    appear here (the optional query image first, then the candidate).
    """
    instruction = DEFAULT_INSTRUCTION if instruction is None or not instruction.strip() else instruction.strip()
    user: list[dict] = [
        {"type": "text", "text": f"<Instruct>: {instruction}"},
        {"type": "text", "text": "<Query>:"},
    ]
    if with_query_image:
        user.append({"type": "image"})
    user += [
        {"type": "text", "text": query},
        {"type": "text", "text": "\n<Document>:"},
        {"type": "image"},
    ]
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": user},
    ]


def render_prompt(processor, query: str, instruction: str | None = None, with_query_image: bool = False) -> str:
    """The prompt text, rendered with the model's own chat template, ending where the answer starts."""
    messages = build_messages(query, instruction, with_query_image)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
