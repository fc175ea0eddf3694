"""What the bench prints and writes: the machine it ran on, the table with its verdicts, the plot."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(device) -> dict:
    import psutil
    import torch
    import transformers

    from ..pipeline import available_cpus

    cuda = device.type == "cuda"
    gpu_name = torch.cuda.get_device_name(device) if cuda else None
    info = {
        "accelerator": gpu_name or "cpu",
        "gpu": gpu_name,
        "gpu_memory_bytes": int(torch.cuda.get_device_properties(device).total_memory) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "driver": None,
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpus_usable": available_cpus(),  # the affinity mask: what the preprocessing pool is sized from
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": int(psutil.virtual_memory().total),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "flash_attn": None,
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        # OpenMP's settings, read when torch loads: spin-waiting threads cost a shared CPU dearly.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "load_average_start": load_average(),  # other work on the machine skews CPU-side timings
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if cuda:
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
    with contextlib.suppress(Exception):
        import importlib.metadata

        info["flash_attn"] = importlib.metadata.version("flash_attn")
    return info




def gib(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GiB"


def count(value: int) -> str:
    return f"{value / 1e9:.2f} B" if value >= 1e9 else f"{value / 1e6:.2f} M"


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def workers_label(count: int) -> str:
    return "inline" if count == 0 else f"{count} worker{'s' if count > 1 else ''}"


def size_label(label: str) -> str:
    return label if label == "mixed" else f"{label.replace('x', '×')} px"


def format_table(report: dict) -> str:
    """One row per measured mode and size (the model card's loop first), then the verdicts."""
    header = ("mode", "size", "images/s", "ms/image", "CPU s/image", "CPU ceiling", "× model card", "max |Δscore|",
              "peak VRAM", "peak RSS", "TFLOP/s", "% of peak")
    rows = [header]
    for r in report["results"]:
        fraction = r.get("fraction_of_peak")
        diff = r.get("max_abs_score_diff_vs_model_card")
        speedup = r.get("speedup_vs_model_card")
        rows.append((
            r["variant"],
            size_label(r["size"]),
            _num(r["images_per_s"]),
            _num(r.get("ms_per_image", r.get("ms_per_image_mean")), 1),
            _num(r.get("cpu_s_per_image"), 3),
            _num(r.get("preprocess_ceiling_images_per_s")),
            "—" if speedup is None else f"×{speedup:.2f}",
            "—" if diff is None else f"{diff:.1e}",
            gib(r["peak_vram_bytes"]),
            gib(r["peak_rss_bytes"]),
            "—" if r.get("achieved_tflops") is None else f"{r['achieved_tflops']:.3g}",
            "—" if fraction is None else f"{100 * fraction:.1f} %",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += verdicts(report)
    return "\n".join(lines)


def verdicts(report: dict) -> list[str]:
    """The summary lines under the table: speedups, which side bounds each run, the baseline's stages."""
    lines = []
    if report["speedup"]:
        parts = []
        for key, value in report["speedup"].items():  # "SIZE" or, with several --workers, "SIZE, N workers"
            size, _, pool = key.partition(", ")
            parts.append(f"{size_label(size)}{', ' + pool if pool else ''} ×{value:.2f}")
        lines.append("speedup (batched ÷ sequential images/s): " + ", ".join(parts))
    for r in report["results"]:
        if r.get("bound_by"):
            lines.append(f"{r['variant']} {size_label(r['size'])}: {r['images_per_s']:.2f} images/s, preprocessing alone "
                         f"{r['preprocess_ceiling_images_per_s']:.2f} images/s: bound by {r['bound_by']}")
    for size, base in (report.get("baseline") or {}).items():
        stages = ", ".join(f"{stage} {ms:.0f}" for stage, ms in base["stage_ms_per_image"].items())
        lines.append(f"model card loop {size_label(size)}: ms per image: {stages}")
        for r in report["results"]:
            if r["size"] == size and r.get("speedup_vs_model_card") is not None:
                diff = r["max_abs_score_diff_vs_model_card"]
                same = "same scores" if diff is not None and diff <= report["score_tolerance"] else "SCORES DIFFER"
                runs = r.get("speedup_vs_model_card_runs") or []
                paired = f" (run by run: {', '.join(f'×{v:.2f}' for v in runs if v is not None)})" if len(runs) > 1 else ""
                lines.append(f"  engine {r['variant']}: ×{r['speedup_vs_model_card']:.2f} the model card's images/s{paired}, "
                             f"max |score difference| {diff:.1e} ({same} within {report['score_tolerance']:g})")
    return lines


def _title(report: dict) -> str:
    model, machine = report["model"], report["machine"]
    return f"{model['name']} · {model['dtype']} · {model['attention']} · {machine['accelerator']} · {machine['date'][:10]}"


def write_plot(report: dict, path: str) -> None:
    """Two panels: throughput (with the preprocessing ceiling marked) and peak memory per mode and
    size; for a memory run, memory and rate over the images."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cuda = report["machine"]["gpu"] is not None
    memory_key, memory_label = ("peak_vram_bytes", "peak VRAM (GiB)") if cuda else ("peak_rss_bytes", "peak RSS (GiB)")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    if report.get("memory_run"):
        for run in report["memory_run"]["runs"]:
            done = [row["done"] for row in run["series"]]
            label = f"{run['mode']} {size_label(run['size'])}"
            left.plot(done, [(row[memory_key] or 0) / 2**30 for row in run["series"]], marker="o", label=label)
            right.plot(done, [row["images_per_s"] or 0 for row in run["series"]], marker="o", label=label)
        left.set(xlabel="images scored", ylabel=f"{memory_label}, per report window", title="Memory over the run (must stay flat)")
        right.set(xlabel="images scored", ylabel="images/s", title="Throughput per report window")
        for axis in (left, right):
            axis.set_ylim(bottom=0)
            axis.legend(fontsize=8)
        fig.suptitle(_title(report), fontsize=10)
        fig.tight_layout()
        _save(fig, path)
        return
    colours = {"model card": "#bcbd22", "sequential": "#7f7f7f", "batched": "#1f77b4"}
    sizes = list(dict.fromkeys(r["size"] for r in report["results"]))
    modes = list(dict.fromkeys(r["variant"] for r in report["results"]))
    width = 0.8 / max(1, len(modes))
    by_key = {(r["variant"], r["size"]): r for r in report["results"]}
    for m, mode in enumerate(modes):
        xs = [i + (m - (len(modes) - 1) / 2) * width for i in range(len(sizes))]
        rates = [by_key[(mode, s)]["images_per_s"] if (mode, s) in by_key else 0 for s in sizes]
        memory = [(by_key[(mode, s)][memory_key] or 0) / 2**30 if (mode, s) in by_key else 0 for s in sizes]
        bars = left.bar(xs, rates, width, label=mode, color=colours.get(mode))
        left.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
        bars = right.bar(xs, memory, width, label=mode, color=colours.get(mode))
        right.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ceilings = report.get("ceiling") or []
    pools = list(dict.fromkeys(c["workers"] for c in ceilings))
    for c in ceilings:
        i = sizes.index(c["size"])
        label = f"preprocessing alone, {workers_label(c['workers'])}" if len(pools) > 1 else "preprocessing alone (CPU ceiling)"
        left.hlines(c["images_per_s"], i - 0.45, i + 0.45, colors=("#d62728", "#ff9896", "#8c564b")[pools.index(c["workers"]) % 3],
                    linestyles="dashed", label=label if i == sizes.index(ceilings[0]["size"]) else None)
    top = max([r["images_per_s"] for r in report["results"]] + [c["images_per_s"] for c in ceilings], default=0)
    for i, size in enumerate(sizes):
        if size in report["speedup"]:
            left.annotate(f"batched ÷ sequential ×{report['speedup'][size]:.2f}", (i, top * 1.12), ha="center", fontsize=9, weight="bold")
    for axis in (left, right):
        axis.set_xticks(range(len(sizes)), [size_label(s) for s in sizes])
        axis.set_ylim(0, axis.get_ylim()[1] * 1.25)
    left.set(ylabel="images/s", title="Throughput (higher is better)")
    right.set(ylabel=memory_label, title="Peak memory, model included" if cuda else "Peak RSS of the process, model included")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(_title(report), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _save(fig, path)


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
