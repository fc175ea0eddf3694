"""Which models this server may load: $LYCHEE_MODELS, a comma-separated list (default: the configured
model, $LYCHEE_MODEL or the real one, and the demo model).

Anyone who can open the page can type into the model box; without a list, that would be any hub id
(a download of many gigabytes) or any folder the server can read. A name not on the list is refused
in one sentence before anything is loaded.
"""

from __future__ import annotations

import os

from lychee_rerank import DEMO_NAME, default_model

from .i18n import t

MODELS_ENV = "LYCHEE_MODELS"


def allowed_models() -> list[str]:
    listed = [name.strip() for name in os.environ.get(MODELS_ENV, "").split(",") if name.strip()]
    return list(dict.fromkeys(listed or [default_model(), DEMO_NAME]))


def is_allowed(name: str) -> bool:
    return name.strip() in allowed_models()


def refusal(name: str) -> str:
    """Why ``name`` is not loaded: one sentence naming the models that are allowed."""
    return t("model_not_allowed", name=name.strip(), allowed=", ".join(allowed_models()), env=MODELS_ENV)


def initial_model() -> str:
    """A new session's model: the configured one, or the first allowed one when it is not allowed."""
    configured = default_model()
    return configured if is_allowed(configured) else allowed_models()[0]
