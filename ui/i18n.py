"""The app's strings in English and Chinese, and the current language.

The language defaults to the browser's (``st.context.locale``: "zh-*" gives Chinese, anything else
English) and can be switched in the sidebar. English labels are the stable ones tests and users look
for ("Query", "Rank", "Download CSV").
"""

from __future__ import annotations

import streamlit as st

LANGUAGES = {"en": "English", "zh": "中文"}
LANGUAGE_KEY = "lang"

# key: (English, 中文). Placeholders use str.format names.
STRINGS: dict[str, tuple[str, str]] = {
    # App and navigation
    "app_title": ("Lychee image reranker", "Lychee 图像重排序"),
    "nav_rerank": ("Rerank", "重排序"),
    "nav_gpu": ("GPU monitor", "GPU 监控"),
    "language": ("Language / 语言", "Language / 语言"),
    "login_needed": ("Log in to use this server.", "请登录后使用本服务器。"),
    "login": ("Log in", "登录"),
    "logout": ("Log out {name}", "退出登录 {name}"),
    # Model (sidebar)
    "model_header": ("Model", "模型"),
    "model_input": ("Model: hub id, local folder, or demo", "模型：Hub ID、本地目录或 demo"),
    "model_input_help": (
        "This server allows: {allowed}. vec-ai/lychee-rerank-mm is the real reranker (about 17 GB of GPU "
        "memory in bf16); a local folder holding a downloaded copy works offline; demo is a tiny random model "
        "for trying the app.",
        "本服务器允许：{allowed}。vec-ai/lychee-rerank-mm 为真实的重排序模型（bf16 约需 17 GB 显存）；"
        "也可填写已下载模型的本地目录（可离线使用）；demo 为用于试用的微型随机模型。",
    ),
    "model_not_allowed": (
        "{name} is not on this server's list of models ({env}): choose one of {allowed}.",
        "{name} 不在本服务器允许的模型列表（{env}）中：请从 {allowed} 中选择。",
    ),
    "dtype": ("Precision (dtype)", "精度 (dtype)"),
    "dtype_help": (
        "auto: bfloat16 on recent GPUs, float16 on older ones, float32 on CPU.",
        "auto：较新的 GPU 用 bfloat16，较旧的用 float16，CPU 上用 float32。",
    ),
    "quantize": ("Quantisation", "量化"),
    "quantize_help": (
        "8bit/4bit weights (bitsandbytes) let the 7B model run on GPUs under 24 GB, with slightly different "
        "scores. auto: none when the bf16 weights and a batch fit in free GPU memory, else 8bit, else 4bit; "
        "none on CPU.",
        "8bit/4bit 权重（bitsandbytes）可让 7B 模型在 24 GB 以下的 GPU 上运行，分数略有差异。auto：空闲显存"
        "放得下 bf16 权重和一个批次时不量化，否则 8bit，再否则 4bit；CPU 上不量化。",
    ),
    "load_model": ("Load model", "加载模型"),
    "loading_model": (
        "Loading {name} ({dtype})… the first start of the real model downloads about 16 GB.",
        "正在加载 {name}（{dtype}）……首次启动真实模型需下载约 16 GB。",
    ),
    "info_name": ("Name", "名称"),
    "info_device": ("Device", "设备"),
    "info_dtype": ("dtype", "精度"),
    "info_attention": ("Attention", "注意力实现"),
    "info_parameters": ("Parameters", "参数量"),
    "info_load_time": ("Load time", "加载耗时"),
    "info_quantization": ("Quantisation", "量化"),
    "info_weights_memory": ("Weights memory", "权重内存"),
    "model_failed_short": ("{name} is not loaded.", "{name} 未加载。"),
    "model_error": ("The model could not be loaded. {reason}", "模型无法加载。{reason}"),
    "use_demo": ("Use the built-in demo model", "使用内置演示模型"),
    "retry": ("Retry loading", "重新加载"),
    "demo_badge": ("Demo weights — scores mean nothing", "演示权重——分数没有意义"),
    "demo_banner_load": (
        "Demo model in use: tiny random weights for trying the app. Its scores mean nothing — load {models} "
        "in the sidebar for meaningful rankings.",
        "正在使用演示模型：仅用于试用的微型随机权重，其分数没有任何意义。如需有意义的排序，请在侧边栏加载 "
        "{models}。",
    ),
    "demo_banner_only": (
        "Demo model in use: tiny random weights for trying the app. Its scores mean nothing, and this server "
        "offers no other model ({env}): ask its administrator for the real one.",
        "正在使用演示模型：仅用于试用的微型随机权重，其分数没有任何意义；本服务器不提供其他模型（{env}），"
        "如需真实模型请联系管理员。",
    ),
    "models_or": (" or ", " 或 "),
    "starting_app": ("Starting the app…", "正在启动应用……"),
    "demo_results": (
        "These scores come from the demo model's random weights: the order is meaningless.",
        "这些分数来自演示模型的随机权重：排序没有意义。",
    ),
    "model_busy": (
        "The model is busy with another run; a new run waits for it.",
        "模型正被另一个任务使用；新任务会排队等待。",
    ),
    # Rerank page: inputs
    "rerank_title": ("Rerank images", "图像重排序"),
    "rerank_intro": (
        "Rank a collection of images against a query — Chinese, English or mixed, optionally with a query image.",
        "按查询对一组图片排序——支持中文、英文或混合查询，也可附加查询图片。",
    ),
    "query": ("Query", "查询"),
    "query_placeholder": ("e.g. 海边日落 sunset over the sea", "例如：海边日落 sunset over the sea"),
    "query_image": ("Query image (optional)", "查询图片（可选）"),
    "query_image_kept": ("Query image: {name}", "查询图片：{name}"),
    "query_image_preview": ("Query image", "查询图片"),
    "query_image_bad": (
        "This query image cannot be used: {reason} Upload another one, or remove it.",
        "此查询图片无法使用：{reason} 请上传其他图片，或将其移除。",
    ),
    "advanced": ("Advanced settings", "高级设置"),
    "instruction": ("Instruction", "指令"),
    "instruction_help": (
        "The task description the reranker sees before the query. Leave it empty for the default.",
        "模型在查询前看到的任务说明。留空则使用默认指令。",
    ),
    "resolution": ("Resolution: max visual tokens per image", "分辨率：每张图片最多视觉 token 数"),
    "resolution_help": (
        "Larger images are scaled down to at most this many visual tokens (28×28 pixels each). "
        "Fewer tokens: faster and less memory; more: finer detail.",
        "较大的图片会缩小到不超过该数量的视觉 token（每个 28×28 像素）。token 越少越快、越省显存；越多细节越好。",
    ),
    "res_256": ("256 · fast", "256 · 快速"),
    "res_640": ("640 · balanced", "640 · 均衡"),
    "res_1280": ("1280 · detailed (default)", "1280 · 精细（默认）"),
    "mode": ("Mode", "运行模式"),
    "preprocess": ("Preprocessing", "预处理"),
    "pre_exact": ("exact — as the model card (default)", "exact — 与模型卡一致（默认）"),
    "pre_fast": ("fast — large JPEGs decoded smaller", "fast — 大 JPEG 缩小解码"),
    "preprocess_help": (
        "Fast decodes large JPEGs at a reduced scale, still at least the size the model sees: about "
        "twice the preprocessing speed, scores very close to exact but not identical.",
        "fast 以较小比例解码大 JPEG（不小于模型所见尺寸）：预处理约快一倍，分数与 exact 非常接近但不完全相同。",
    ),
    "mode_auto": ("auto — adaptive batching (fastest)", "auto — 自适应批处理（最快）"),
    "mode_sequential": ("sequential — one image at a time (memory-safe)", "sequential — 逐张处理（最省显存）"),
    "upload_source": ("Images from", "图片来源"),
    "src_files": ("Uploaded files", "上传文件"),
    "src_folder": ("Uploaded folder", "上传文件夹"),
    "src_server": ("Folder on the server", "服务器上的文件夹"),
    "server_folder": ("Folder on the server", "服务器上的文件夹"),
    "server_folder_placeholder": ("Choose a folder, or type its path", "选择文件夹，或输入其路径"),
    "server_folder_help": (
        "The folders inside {root} are listed with the images under each; any other folder inside it can be "
        "typed (absolute, or relative to it) and chosen with Enter. Subfolders are included. The images are "
        "read on the server where they are; nothing is uploaded.",
        "列出了 {root} 内的文件夹及其中的图片数；也可以输入其中的任何其他文件夹（绝对路径或相对路径）并按回车选择。"
        "包含子文件夹。图片直接在服务器上读取，无需上传。",
    ),
    "server_folder_hint": (
        "Choose a folder inside {root}, or type its path and press Enter.",
        "选择 {root} 内的文件夹，或输入其路径并按回车。",
    ),
    "folder_option": ("{path} · {n} images", "{path} · {n} 张图片"),
    "folder_option_more": ("{path} · {n}+ images", "{path} · {n}+ 张图片"),
    "folder_root": ("(the whole data folder)", "（整个数据文件夹）"),
    "folder_none": ("Choose a folder inside the data folder.", "请选择数据文件夹内的文件夹。"),
    "folder_no_root": (
        "The data folder {root} ({env}) does not exist on the server.", "服务器上不存在数据文件夹 {root}（{env}）。"
    ),
    "folder_nul": ("A folder name cannot contain a NUL byte.", "文件夹名称不能包含 NUL 字节。"),
    "folder_missing": ("There is no folder {folder} in {root}.", "{root} 中没有文件夹 {folder}。"),
    "folder_broken_link": (
        "The folder {folder} is a broken link: it points to nothing.", "文件夹 {folder} 是失效的链接：它没有指向任何内容。"
    ),
    "folder_name_too_long": (
        "This name is too long for the server's file system ({n} characters).",
        "该名称过长，服务器的文件系统无法处理（{n} 个字符）。",
    ),
    "folder_loop": (
        "The folder {folder} is a link that leads back to itself (a loop).", "文件夹 {folder} 是指回自身的链接（循环）。"
    ),
    "folder_unreadable": ("The folder {folder} cannot be opened ({reason}).", "无法打开文件夹 {folder}（{reason}）。"),
    "folder_outside": (
        "The folder {folder} is outside the data folder {root}; only folders inside it can be ranked.",
        "文件夹 {folder} 位于数据文件夹 {root} 之外；只能对其中的文件夹排序。",
    ),
    "folder_is_file": ("The path {folder} is a file, not a folder.", "路径 {folder} 是文件，不是文件夹。"),
    "did_you_mean": ("Did you mean {names}?", "您是不是要找 {names}？"),
    "server_empty": ("There are no images in {folder}.", "{folder} 中没有图片。"),
    "server_found": (
        "{n} images found in {folder} ({size}); they are read from the server's disk, not uploaded.",
        "在 {folder} 中找到 {n} 张图片（{size}）；直接从服务器磁盘读取，无需上传。",
    ),
    "server_skipped": ("Files not taken ({n})", "未采用的文件（{n}）"),
    "server_skipped_more": ("… and {n} more.", "……另有 {n} 个。"),
    "rescan": ("Scan again", "重新扫描"),
    "col_reason": ("Why", "原因"),
    "upload_files": ("Images to rank (PNG, JPEG, WebP, BMP, GIF, TIFF…)", "待排序的图片（PNG、JPEG、WebP、BMP、GIF、TIFF……）"),
    "upload_folder": ("A folder of images (subfolders included)", "图片文件夹（包含子文件夹）"),
    "n_selected": ("{n} images selected ({size}).", "已选择 {n} 张图片（{size}）。"),
    "n_kept": (
        "{n} images kept from your earlier upload ({size}); upload new ones to replace them.",
        "保留了之前上传的 {n} 张图片（{size}）；上传新图片即可替换。",
    ),
    "forget_files": ("Remove these images", "移除这些图片"),
    # Rerank page: actions and run
    "rank": ("Rank images", "开始排序"),
    "rank_help": ("Score every image against the query.", "对每张图片按查询打分。"),
    "resume": ("Resume: rank the {n} not scored yet", "继续：对未评分的 {n} 张排序"),
    "clear": ("Clear results and images", "清除结果和图片"),
    "clear_help": (
        "Removes the results and the uploaded images from the server's memory.",
        "从服务器内存中移除结果和已上传的图片。",
    ),
    "clear_server": ("Clear results", "清除结果"),
    "clear_server_help": ("Removes the results; the folder stays selected.", "移除结果；所选文件夹保持不变。"),
    "stop": ("Stop", "停止"),
    "need_model": ("Load a model first (see above).", "请先加载模型（见上方）。"),
    "need_query": ("Type a query (or add a query image) first.", "请先输入查询（或添加查询图片）。"),
    "need_files": ("Upload some images first.", "请先上传图片。"),
    "index_status": ("{n} images, {m} indexed", "{n} 张图片，已索引 {m} 张"),
    "index_action": ("Index", "建立索引"),
    "index_help": (
        "Embed the folder's new and changed images into the search index (files already indexed are not read "
        "again); then a query can rerank only the most similar images.",
        "将文件夹中新增和修改的图片写入搜索索引（已索引的文件不会重新读取）；之后查询时可只重排序最相似的图片。",
    ),
    "indexing": ("Indexing: {progress}", "正在建立索引：{progress}"),
    "index_report": (
        "{added} added, {changed} changed, {removed} removed, {unchanged} unchanged, {errors} errors; {embedded} "
        "embedded in {elapsed}; {indexed} images indexed",
        "新增 {added}，变更 {changed}，删除 {removed}，未变 {unchanged}，错误 {errors}；{elapsed} 内嵌入 {embedded} 张；"
        "已索引 {indexed} 张图片",
    ),
    "index_report_pending": (
        "; stopped with {n} not indexed yet (run again to finish)", "；已停止，还有 {n} 张未索引（再次运行即可完成）"
    ),
    "stop_indexing": ("Stop", "停止"),
    "rerank_scope": ("Images to rerank", "重排序范围"),
    "scope_all": ("Rerank every image", "重排序所有图片"),
    "scope_top": ("Search the index, rerank the top K", "先检索索引，再重排序前 K 张"),
    "retrieve_k": ("K (images to rerank)", "K（重排序的图片数）"),
    "not_retrieved": (
        "Search then rerank: the top {k} images by similarity were reranked; the other {n} were not scored "
        "(outside the top K).",
        "先检索后重排序：按相似度取前 {k} 张进行重排序；其余 {n} 张未评分（不在前 K 张之内）。",
    ),
    "need_folder": ("Choose a folder with images first.", "请先选择包含图片的文件夹。"),
    "need_good_query_image": (
        "The query image cannot be used (see above): upload another one, or remove it.",
        "查询图片无法使用（见上方）：请上传其他图片，或将其移除。",
    ),
    "run_header": ("Ranking {total} images", "正在对 {total} 张图片排序"),
    "resuming": (
        "Resuming: {done} already scored, ranking the remaining {todo}.",
        "继续：已评分 {done} 张，正在对剩余 {todo} 张排序。",
    ),
    "starting": ("Starting…", "正在启动……"),
    "waiting": ("Waiting for another run on this model to finish…", "正在等待该模型上的另一个任务完成……"),
    "waiting_place": (
        "Waiting for other runs on this model: place {n} in the queue…",
        "正在等待该模型上的其他任务：排队第 {n} 位……",
    ),
    "stopping": ("stopping after the current batch…", "当前批次完成后停止……"),
    "best_so_far": ("Best so far: {name} ({score})", "目前最佳：{name}（{score}）"),
    "progress_line": ("{done}/{total} · {rate} img/s", "{done}/{total} · 每秒 {rate} 张"),
    "progress_line_eta": ("{done}/{total} · {rate} img/s · ETA {eta}", "{done}/{total} · 每秒 {rate} 张 · 预计还需 {eta}"),
    "dur_s": ("{s} s", "{s} 秒"),
    "dur_min_s": ("{m} min {s} s", "{m} 分 {s} 秒"),
    "dur_h_min": ("{h} h {m} min", "{h} 小时 {m} 分"),
    "run_failed": ("The run failed: {reason}", "运行失败：{reason}"),
    "input_error": ("Cannot rank: {reason}", "无法排序：{reason}"),
    "stopped_note": (
        "Stopped: {scored} of {total} images scored. Resume ranks only the rest.",
        "已停止：{total} 张中已评分 {scored} 张。“继续”只对其余图片排序。",
    ),
    "pending_note": (
        "{n} images are not scored yet. Resume scores only those; the others keep their scores.",
        "有 {n} 张图片尚未评分。“继续”只对这些图片评分，其余图片保留原有分数。",
    ),
    "summary": (
        "{scored} images ranked in {elapsed} · mode {mode} · model {model}",
        "已排序 {scored} 张图片，耗时 {elapsed} · 模式 {mode} · 模型 {model}",
    ),
    "summary_errors": (" · {n} could not be read", " · {n} 张无法读取"),
    "stale": (
        "These results belong to the previous query “{query}”: {changes} changed since. Click Rank to score the current query.",
        "以下结果属于之前的查询“{query}”：此后{changes}已更改。点击“开始排序”为当前查询评分。",
    ),
    "chg_query": ("the query", "查询"),
    "chg_query_image": ("the query image", "查询图片"),
    "chg_instruction": ("the instruction", "指令"),
    "chg_resolution": ("the resolution", "分辨率"),
    "chg_model": ("the model", "模型"),
    "chg_preprocess": ("the preprocessing", "预处理方式"),
    "no_query_text": ("(query image only)", "（仅查询图片）"),
    # Rerank page: results
    "results": ("Results", "结果"),
    "top_k": ("Show top K", "显示前 K 张"),
    "top_k_help": (
        "0 shows all. Display filter only: nothing is scored again, and the CSV and JSON always hold the "
        "full ranking; the ZIP holds the images shown.",
        "0 表示全部。仅为显示筛选：不会重新评分，CSV 和 JSON 始终是完整排序；ZIP 包含当前显示的图片。",
    ),
    "min_score": ("Minimum score", "最低分数"),
    "filters_help": (
        "Display filters only: nothing is scored again. The CSV and JSON always hold the full ranking; the ZIP "
        "holds the images shown.",
        "仅为显示筛选：不会重新评分。CSV 和 JSON 始终是完整排序；ZIP 包含当前显示的图片。",
    ),
    "find_file": ("Find a file", "查找文件"),
    "find_file_placeholder": ("part of a file name", "文件名的一部分"),
    "find_file_help": (
        "Shows only the images whose name contains this text (any case), each with its rank in the whole ranking.",
        "只显示名称包含该文本（不区分大小写）的图片，每张都显示其在整个排序中的名次。",
    ),
    "found_files": ("{n} of the {scored} scored images match “{text}”.", "{scored} 张已评分图片中有 {n} 张匹配“{text}”。"),
    "show_as": ("Show as", "显示方式"),
    "view_gallery": ("Gallery", "图库"),
    "view_table": ("Table", "表格"),
    "columns": ("Columns", "列数"),
    "per_page": ("Per page", "每页"),
    "showing": ("Showing {shown} of {scored} scored images.", "显示 {shown} / {scored} 张已评分图片。"),
    "nothing_matches": ("No image passes the filters.", "没有图片满足筛选条件。"),
    "no_results_yet": ("Nothing scored yet.", "尚无评分结果。"),
    "card_score": ("**#{rank}** · score {score}", "**#{rank}** · 分数 {score}"),
    "card_retrieval": (
        "search #{rank} · similarity {similarity}",
        "检索第 {rank} · 相似度 {similarity}",
    ),
    "previous": ("Previous", "上一张"),
    "next": ("Next", "下一张"),
    "viewer_position": ("{n} of {total} shown", "显示中的第 {n} / {total} 张"),
    "full_view": ("Full-size view", "原图查看"),
    "full_view_note": (
        "Fitted to the window (at most {px} px on its longer side). ← and → show the previous and next image.",
        "适应窗口显示（最长边最多 {px} 像素）。按 ← 和 → 查看上一张和下一张。",
    ),
    "download_original": ("Download original", "下载原图"),
    "cannot_display": ("This image cannot be displayed.", "无法显示此图片。"),
    "errors_title": ("Files that could not be scored ({n})", "无法评分的文件（{n}）"),
    "col_rank": ("Rank", "排名"),
    "col_preview": ("Preview", "预览"),
    "col_file": ("File", "文件"),
    "col_score": ("Score", "分数"),
    "col_size": ("Size (px)", "尺寸（像素）"),
    "col_size_help": ("The file's own size in pixels (orientation applied).", "文件本身的像素尺寸（已按方向校正）。"),
    "col_model_size": ("Model input (px)", "模型输入（像素）"),
    "col_model_size_help": (
        "The size the model saw, after resizing to the resolution setting.",
        "按分辨率设置缩放后，模型实际看到的尺寸。",
    ),
    "col_tokens": ("Visual tokens", "视觉 token"),
    "col_retrieval_rank": ("Search rank", "检索排名"),
    "col_retrieval_rank_help": (
        "Its place in the index search (the first stage) before Lychee reranked the top K.",
        "Lychee 重新排序前，它在索引检索（第一阶段）中的名次。",
    ),
    "col_similarity": ("Similarity", "相似度"),
    "col_error": ("Error", "错误"),
    "tokens_unit": ("{n} visual tokens", "{n} 个视觉 token"),
    "download_csv": ("Download CSV", "下载 CSV"),
    "download_json": ("Download JSON", "下载 JSON"),
    "table_previews": (
        "Previews are shown for the first {n} rows.",
        "仅前 {n} 行显示预览。",
    ),
    "zip_shown": ("ZIP of the {n} shown ({size})", "下载显示的 {n} 张 ZIP（{size}）"),
    "zip_selected": ("ZIP of the {n} selected ({size})", "下载选中的 {n} 张 ZIP（{size}）"),
    "zip_help": (
        "The original files, named by rank (001_name.jpg …). Narrow it with Show top K or the minimum "
        "score, or select rows in the table.",
        "原始文件，按排名命名（001_名称.jpg……）。可用“显示前 K 张”或最低分数缩小范围，或在表格中选择行。",
    ),
    "zip_download": ("Download {name} ({size})", "下载 {name}（{size}）"),
    "zip_no_room": (
        "Not enough free disk space on the server for this ZIP ({free} free): lower Show top K or select rows.",
        "服务器磁盘空间不足以生成此 ZIP（剩余 {free}）：请减小“显示前 K 张”或在表格中选择行。",
    ),
    "zip_too_big": (
        "Too large for one ZIP (at most {limit}): lower Show top K or select rows in the table.",
        "超出单个 ZIP 的上限（最多 {limit}）：请减小“显示前 K 张”或在表格中选择行。",
    ),
    "zip_left_out": (
        "{n} of these files can no longer be read and will be left out of the ZIP (NOT_INCLUDED.txt inside it "
        "lists them): {names}",
        "其中 {n} 个文件已无法读取，将不包含在 ZIP 中（ZIP 内的 NOT_INCLUDED.txt 列出了它们）：{names}",
    ),
    "downloads_help": (
        "The full ranking: every image, errors and unscored ones included, whatever the display filters.",
        "完整排序：包含所有图片（含错误和未评分的），不受显示筛选影响。",
    ),
    # Streamlit's own texts in the file uploader (drawn over them in Chinese: ui/style.py)
    "uploader_button": ("Upload", "上传"),
    "uploader_folder_button": ("Upload directories", "上传文件夹"),
    "uploader_limit": ("{mb} MB per file", "每个文件最大 {mb} MB"),
    # Memory readouts
    "no_gpu_short": ("No NVIDIA GPU — running on CPU", "未检测到 NVIDIA GPU — 正在 CPU 上运行"),
    "no_gpu": ("No NVIDIA GPU detected — running on CPU.", "未检测到 NVIDIA GPU — 正在 CPU 上运行。"),
    "gpu_label": ("GPU {index} · {name}", "GPU {index} · {name}"),
    "vram_used": ("VRAM used", "显存已用"),
    "torch_alloc": ("Torch allocated", "Torch 已分配"),
    "torch_reserved": ("Torch reserved", "Torch 已保留"),
    "torch_peak": ("Torch peak", "Torch 峰值"),
    "rss": ("Process memory (RSS)", "进程内存 (RSS)"),
    "sys_used": ("System memory used", "系统内存已用"),
    "sys_avail": ("System memory available", "系统可用内存"),
    # GPU monitor page
    "gpu_title": ("GPU monitor", "GPU 监控"),
    "gpu_intro": (
        "Memory, utilisation and temperature of each GPU, refreshed every 2 seconds.",
        "每块 GPU 的显存、利用率和温度，每 2 秒刷新一次。",
    ),
    "util": ("Utilisation", "利用率"),
    "temp": ("Temperature", "温度"),
    "high_mem": (
        "GPU {index} has {pct} of its memory in use (warning from {limit}). Freeing the allocator's cache may help.",
        "GPU {index} 显存已用 {pct}（超过 {limit} 即警告）。释放分配器缓存可能有帮助。",
    ),
    "free_mem": ("Free cached memory", "释放缓存显存"),
    "freed": ("Freed {amount} of cached memory.", "已释放 {amount} 缓存显存。"),
    "seconds_ago": ("Seconds (0 = now)", "秒（0 = 现在）"),
    "history": ("History (last {n} readings)", "历史（最近 {n} 次读数）"),
    "run_in_progress": ("A ranking run is in progress: {progress}", "排序任务进行中：{progress}"),
    "na": ("n/a", "不可用"),
}


def default_language(locale: str | None) -> str:
    """'zh' for a Chinese browser locale (zh, zh-CN, zh-TW, …), else 'en'."""
    return "zh" if locale and locale.strip().lower().startswith("zh") else "en"


def browser_language() -> str:
    try:
        return default_language(st.context.locale)
    except Exception:  # no browser context (bare mode): English
        return "en"


def current() -> str:
    lang = st.session_state.get(LANGUAGE_KEY)
    return lang if lang in LANGUAGES else browser_language()


def t(key: str, **values) -> str:
    """The string for ``key`` in the current language, formatted with ``values``."""
    return text(current(), key, **values)


def text(lang: str, key: str, **values) -> str:
    english, chinese = STRINGS[key]
    template = chinese if lang == "zh" else english
    return template.format(**values) if values else template


def bound():
    """t() fixed to the current language: for format_func callbacks, which Streamlit may call outside
    the script run (where session state, hence the language, is out of reach)."""
    lang = current()
    return lambda key, **values: text(lang, key, **values)


def _language_chosen() -> None:
    st.session_state[LANGUAGE_KEY] = st.session_state[_WIDGET_KEY]


_WIDGET_KEY = "lang_choice"


def language_selector() -> str:
    """The sidebar's language switch; returns 'en' or 'zh'.

    The choice lives in its own session key, not in the widget's: Streamlit re-identifies widgets of
    the main script when st.navigation's page changes (the first rerun, page switches), and a
    widget-held value would fall back to the default then.
    """
    if st.session_state.get(LANGUAGE_KEY) not in LANGUAGES:
        st.session_state[LANGUAGE_KEY] = browser_language()
    options = list(LANGUAGES)
    st.sidebar.radio(
        STRINGS["language"][0],
        options,
        index=options.index(st.session_state[LANGUAGE_KEY]),
        format_func=LANGUAGES.get,
        key=_WIDGET_KEY,
        on_change=_language_chosen,
        horizontal=True,
    )
    return st.session_state[LANGUAGE_KEY]
