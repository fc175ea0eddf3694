"""The engine's messages in the page's language: translated at the UI's edge.

The choice: the engine (lychee_rerank) words every message a user can see in English, one sentence,
for the command line, the Python API and logs alike, and knows nothing of languages. The app
translates a message where it shows it, by matching it against the engine's own templates (below:
the English text with {placeholders}, and its Chinese). Stable error codes in the engine were the
alternative: they would change every raise in the engine and every caller, for one front end.
tests/test_i18n.py reads every message the engine can produce (from its source) and checks that a
template here matches it, and that every template still matches one: a message added to the engine
without its Chinese turns that test red. A message no template matches (a library's own error) is
shown as it is, never lost.

Placeholders named in NESTED hold a piece of text that is itself translated (another engine
message, an operating-system error, a term such as "the query"); the others (names, numbers) are
kept as they are.
"""

from __future__ import annotations

import re
from functools import lru_cache

from . import fmt, i18n

NESTED = frozenset({"reason", "what", "kind", "advice", "hint", "extra"})

# (English template, Chinese template): every message lychee_rerank can give a user of the app.
TEMPLATES: tuple[tuple[str, str], ...] = (
    # Reading files (images.py, confine.py, archive.py)
    ("file not found: it was removed or renamed since the folder was read", "找不到文件：读取文件夹之后它已被删除或重命名"),
    ("file not found: {path}", "找不到文件：{path}"),
    ("broken link: it points to nothing", "链接已失效：它没有指向任何文件"),
    ("permission denied: the file cannot be read", "权限不足：无法读取该文件"),
    ("the file cannot be read ({reason})", "无法读取该文件（{reason}）"),
    ("the file name is not valid", "文件名无效"),
    ("not a regular file ({kind})", "不是普通文件（{kind}）"),
    ("not a regular file", "不是普通文件"),
    ("the file is empty", "文件为空"),
    ("the upload cannot be read ({reason})", "无法读取上传的文件（{reason}）"),
    ("the file changed while it was being opened; try again", "打开文件时文件发生了变化；请重试"),
    ("the file now lies outside the data folder (a link leads out of it), so it is not read",
     "该文件现已位于数据文件夹之外（有链接指向外部），因此不会被读取"),
    # Decoding (images.py)
    ("not an image, or an image format that cannot be read", "不是图片，或是无法读取的图片格式"),
    ("not enough memory to decode this image", "内存不足，无法解码这张图片"),
    ("the image data is truncated or corrupt ({detail})", "图片数据被截断或已损坏（{detail}）"),
    ("image too large to decode safely (over {pixels} pixels)", "图片过大，无法安全解码（超过 {pixels} 像素）"),
    ("the image has no pixels", "图片没有像素"),
    # Scoring (execution.py, scoring.py)
    ("not enough GPU memory to score this image even on its own; lower the resolution (max pixels) or free "
     "GPU memory used by other programs",
     "即使单独处理，GPU 显存也不足以为这张图片评分；请降低分辨率（最大像素数），或释放其他程序占用的显存"),
    ("not enough memory to preprocess this image; lower the resolution", "内存不足，无法预处理这张图片；请降低分辨率"),
    ("the image could not be preprocessed ({detail})", "无法预处理这张图片（{detail}）"),
    ("at this resolution the image needs {tokens} tokens, more than the model's {positions} positions allow "
     "with the query; lower the resolution",
     "在此分辨率下这张图片需要 {tokens} 个 token，超过了模型在此查询下允许的 {positions} 个位置；请降低分辨率"),
    ("{what} is too long: with the prompt the query takes {tokens} tokens ({part} {count}), and the model was "
     "trained on inputs of at most {limit} tokens including the image; shorten {advice}",
     "{what}过长：加上提示词，查询共占 {tokens} 个 token（{part} {count} 个），而模型训练时的输入（含图片）"
     "最多 {limit} 个 token；请{advice}"),
    ("these settings are for {settings}, but this reranker holds {loaded}", "这些设置针对 {settings}，但当前加载的是 {loaded}"),
    ("runs that share forwards must share the mode, the workers, the token budget and the feature cache",
     "共享前向计算的任务必须使用相同的运行模式、工作线程数、token 预算和特征缓存"),
    ("{names} names for {images} images", "{names} 个名称对应 {images} 张图片"),
    # The run's settings (checks.py, settings.py)
    ("type a query (or give a query image) to rank the images against", "请输入查询（或提供查询图片），用于给图片排序"),
    ("{what} is not valid UTF-8 text; type it again or fix the encoding of the file it came from",
     "{what}不是有效的 UTF-8 文本；请重新输入，或修正其来源文件的编码"),
    ("{what} contains {token}, a control token of the model's prompt; remove it (such tokens are never read as "
     "text, they would change the prompt's structure)",
     "{what}包含 {token}，这是模型提示词的控制标记；请将其删除（此类标记不会被当作文本，而会改变提示词的结构）"),
    ("min pixels must be positive, not {value}", "最小像素数必须为正数，而不是 {value}"),
    ("max pixels ({max}) must be at least min pixels ({min}, {tokens} visual tokens of {pixels} pixels)",
     "最大像素数（{max}）不能小于最小像素数（{min}，即 {tokens} 个每个 {pixels} 像素的视觉 token）"),
    ("the query image cannot be used: {reason}", "查询图片无法使用：{reason}"),
    ("the query image cannot be read ({reason})", "无法读取查询图片（{reason}）"),
    ("unknown {what} {value}; choose one of {choices}", "未知的{what} {value}；请从 {choices} 中选择"),
    ("workers must be at least 1, not {value}", "工作线程数至少为 1，而不是 {value}"),
    ("the token budget must be at least 1, not {value}", "token 预算至少为 1，而不是 {value}"),
    # Folders (inputs.py)
    ("no such file or folder: {path}", "没有这个文件或文件夹：{path}"),
    ("the path {path} contains a NUL byte", "路径 {path} 含有 NUL 字节"),
    ("the path {path} cannot be used ({reason})", "无法使用路径 {path}（{reason}）"),
    ("a link to a folder already searched", "指向已搜索过的文件夹的链接"),
    ("folder cannot be read: permission denied", "无法读取文件夹：权限不足"),
    ("folder cannot be read ({reason})", "无法读取文件夹（{reason}）"),
    ("removed while searching", "搜索期间已被删除"),
    ("cannot be read ({reason})", "无法读取（{reason}）"),
    ("a link to a {kind} outside the data folder", "指向数据文件夹之外的{kind}的链接"),
    ("format not supported ({format})", "不支持的格式（{format}）"),
    ("not an image", "不是图片"),
    # Loading the model (loading.py, quantization.py)
    ("no model named; give a hub id, a local directory, or 'demo'", "未指定模型；请填写 Hub ID、本地目录或 'demo'"),
    ("{path} has no config.json: it is not a model directory", "{path} 中没有 config.json：它不是模型目录"),
    ("model directory not found: {name} (give an existing directory, a hub id, or 'demo')",
     "找不到模型目录：{name}（请填写已存在的目录、Hub ID 或 'demo'）"),
    ("{name} needs a Hugging Face login: set HF_TOKEN, or use the demo model",
     "{name} 需要登录 Hugging Face：请设置 HF_TOKEN，或使用演示模型"),
    ("no model called {name} on the Hugging Face Hub or on disk; check the name, or use the demo model",
     "Hugging Face Hub 和本机磁盘上都没有名为 {name} 的模型；请检查名称，或使用演示模型"),
    ("could not download {name}: the Hugging Face Hub cannot be reached and it is not in the local cache; {hint}",
     "无法下载 {name}：无法连接 Hugging Face Hub，本地缓存中也没有；{hint}"),
    ("could not download {name}: the Hugging Face Hub cannot be reached; {hint}", "无法下载 {name}：无法连接 Hugging Face Hub；{hint}"),
    ("the {label} weights of {name} do not fit in the free GPU memory{extra}", "{name} 的 {label} 权重放不进空闲显存{extra}"),
    ("not enough memory to load {name}: it needs about 17 GB of GPU memory in bf16 (load it in 8-bit or 4-bit, "
     "close other programs using the GPU, or use a larger GPU)",
     "内存不足，无法加载 {name}：bf16 下约需 17 GB 显存（请以 8-bit 或 4-bit 加载、关闭其他占用 GPU 的程序，或使用更大的 GPU）"),
    ("not enough memory to load {name}: close other programs using the memory, or use a smaller model",
     "内存不足，无法加载 {name}：请关闭其他占用内存的程序，或使用更小的模型"),
    ("could not load {name}: {detail}", "无法加载 {name}：{detail}"),
    ("{label} loading needs the bitsandbytes package (pip install bitsandbytes)",
     "{label} 加载需要 bitsandbytes 软件包（pip install bitsandbytes）"),
    ("{label} needs a CUDA GPU: the installed bitsandbytes {version} has no {device} backend",
     "{label} 需要 CUDA GPU：已安装的 bitsandbytes {version} 没有 {device} 后端"),
    # The feature cache (feature_cache.py, settings.py)
    ("the feature cache folder is empty; name a folder, or turn the cache off", "特征缓存文件夹为空；请指定一个文件夹，或关闭缓存"),
    ("the feature cache folder {path} is a file, not a folder", "特征缓存文件夹 {path} 是文件，不是文件夹"),
    ("the feature cache folder {path} cannot be created ({reason})", "无法创建特征缓存文件夹 {path}（{reason}）"),
    ("the feature cache folder {path} is not writable", "特征缓存文件夹 {path} 不可写"),
    ("LYCHEE_FEATURE_CACHE_GB must be a number of gigabytes, not {value}", "LYCHEE_FEATURE_CACHE_GB 必须是以 GB 为单位的数字，而不是 {value}"),
    ("LYCHEE_FEATURE_CACHE_GB must be positive, not {value}", "LYCHEE_FEATURE_CACHE_GB 必须为正数，而不是 {value}"),
    ("the model has no vision tower the cache knows", "该模型没有特征缓存能识别的视觉编码器"),
    ("the vision tower's weights are offloaded, so their identity cannot be read",
     "视觉编码器的权重已被卸载，无法读取其标识"),
    # Searching the index (retrieval/)
    ("{name} is not an image-text embedder (a SigLIP 2, SigLIP or CLIP checkpoint)",
     "{name} 不是图文嵌入模型（SigLIP 2、SigLIP 或 CLIP 检查点）"),
    ("cannot tell the width of this embedder's vectors from its config", "无法从配置中得知该嵌入模型的向量维度"),
    ("the number of images to retrieve must be at least 1, not {value}", "要检索的图片数至少为 1，而不是 {value}"),
    ("the index in {path} was built with the embedder {built}, not {asked}", "{path} 中的索引是用嵌入模型 {built} 建立的，而不是 {asked}"),
    ("this index was built with the embedder {built}, not {asked}: use the same one, or build a new index in another folder",
     "该索引是用嵌入模型 {built} 建立的，而不是 {asked}：请使用同一个模型，或在另一个文件夹中建立新索引"),
    ("{path} is outside the index's root folder {root}", "{path} 位于索引的根文件夹 {root} 之外"),
    ("there is no index in {path} (build one with the index command)", "{path} 中没有索引（请用 index 命令建立）"),
    ("the index in {path} cannot be read ({reason})", "无法读取 {path} 中的索引（{reason}）"),
    ("the index in {path} was made by another version: rebuild it in a new folder", "{path} 中的索引由其他版本建立：请在新文件夹中重建"),
    ("{path} is a file, not a folder", "{path} 是文件，不是文件夹"),
    ("{path} is not empty and holds no index: choose an empty or new folder", "{path} 不为空且不含索引：请选择空文件夹或新文件夹"),
    ("cannot create an index in {path} ({reason})", "无法在 {path} 中建立索引（{reason}）"),
    ("the index in {path} is being updated by another process", "{path} 中的索引正由另一个进程更新"),
)

# Pieces that fill the NESTED placeholders.
TERMS: dict[str, str] = {
    "the query": "查询",
    "the instruction": "指令",
    "the query image": "查询图片",
    "the model name": "模型名称",
    "dtype": "精度 (dtype)",
    "quantisation": "量化方式",
    "attention": "注意力实现",
    "preprocessing": "预处理方式",
    "mode": "运行模式",
    "a folder": "文件夹",
    "a named pipe": "命名管道",
    "a socket": "套接字",
    "a device": "设备",
    "folder": "文件夹",
    "file": "文件",
    "it": "将其缩短",
    "the query or use a smaller query image": "缩短查询，或使用更小的查询图片",
    "download it where there is network and set LYCHEE_MODEL to that directory, or use the demo model":
        "请在有网络的地方下载，并将 LYCHEE_MODEL 设为该目录，或使用演示模型",
    " (choose 4-bit, or free GPU memory)": "（请选择 4-bit，或释放显存）",
    " (free GPU memory, or use a larger GPU)": "（请释放显存，或使用更大的 GPU）",
    # The operating system's words (strerror) that file errors carry
    "No such file or directory": "文件或目录不存在",
    "Permission denied": "权限不足",
    "File name too long": "文件名过长",
    "Too many levels of symbolic links": "符号链接层级过多（可能是链接循环）",
    "Not a directory": "不是目录",
    "Is a directory": "是一个目录",
    "Input/output error": "输入/输出错误",
    "Stale file handle": "文件句柄已失效",
    "Operation not permitted": "操作不被允许",
    "Resource temporarily unavailable": "资源暂时不可用",
}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=1)
def _patterns() -> list[tuple[re.Pattern, str]]:
    """Templates as anchored patterns, the most specific (most literal text) first."""
    compiled = []
    for english, chinese in TEMPLATES:
        parts = _PLACEHOLDER.split(english)
        regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+?)" for i, part in enumerate(parts))
        literal = sum(len(part) for part in parts[::2])
        compiled.append((literal, re.compile(f"^{regex}$", re.DOTALL), chinese))
    compiled.sort(key=lambda entry: -entry[0])
    return [(pattern, chinese) for _, pattern, chinese in compiled]


def to_chinese(message: str) -> str | None:
    """The Chinese of an engine message, or None when no template matches it."""
    message = message.strip()
    if message in TERMS:
        return TERMS[message]
    for pattern, chinese in _patterns():
        found = pattern.match(message)
        if found:
            values = {
                name: (to_chinese(value) or value) if name in NESTED else value
                for name, value in found.groupdict().items()
            }
            return chinese.format(**values)
    return None


def text(message: str) -> str:
    """An engine message as the page shows it in a table cell: in the page's language."""
    if i18n.current() == "zh":
        return to_chinese(message) or message
    return message


def sentence(message: str) -> str:
    """An engine message as a sentence in the page's language (capital letter and full stop, or 。)."""
    if i18n.current() == "zh":
        chinese = to_chinese(message)
        if chinese is not None:
            return chinese if chinese.endswith(("。", "！", "？")) else chinese + "。"
    return fmt.sentence(message)
