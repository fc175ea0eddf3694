"""lychee_rerank: rank images against a text (and optional image) query with Lychee-rerank-mm.

The engine behind the Streamlit app and the CLI; it never imports Streamlit.

    reranker = Reranker.load("demo")            # or a hub id / local directory
    ranking = reranker.rank("海边日落 sunset over the sea", ["a.jpg", "b.png"])
    # or, with every setting in one object (what the CLI, the app and Ray replicas hand around):
    settings = RunSettings.build("海边日落", model="demo", preprocess="fast")
    ranking = Reranker.load(settings.model).run(settings, ["a.jpg", "b.png"])
    for result in ranking.ranked():
        print(result.rank, result.name, result.score, result.error)
"""

from .demo_model import DEMO_NAME
from .execution import MODES
from .images import ImageError, ImageSource
from .loading import (
    ATTENTIONS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    DEFAULT_MODEL,
    DTYPES,
    ModelInfo,
    ModelLoadError,
    default_model,
)
from .preprocess import PREPROCESS_MODES
from .prompt import DEFAULT_INSTRUCTION, SYSTEM_PROMPT
from .quantization import QUANTIZE_MODES
from .reranker import InputError, Reranker
from .results import ImageResult, Progress, Ranking, ranked
from .settings import ModelSettings, QueryImage, RunSettings

__all__ = [
    "ATTENTIONS",
    "DEFAULT_INSTRUCTION",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_PIXELS",
    "DEFAULT_MODEL",
    "DEMO_NAME",
    "DTYPES",
    "MODES",
    "PREPROCESS_MODES",
    "QUANTIZE_MODES",
    "SYSTEM_PROMPT",
    "ImageError",
    "ImageResult",
    "ImageSource",
    "InputError",
    "ModelInfo",
    "ModelLoadError",
    "ModelSettings",
    "QueryImage",
    "Progress",
    "Ranking",
    "Reranker",
    "RunSettings",
    "default_model",
    "ranked",
]
