"""Scale out: rank a catalogue across many GPUs and machines on Ray (a Ray Data actor pool, one
``Reranker`` replica per GPU), results written incrementally and resumable. See docs/scale-out.md.

Ray is optional (requirements-ray.txt): importing this package does not import it (nor pyarrow).

    from lychee_rerank import RunSettings
    from lychee_rerank.scale_out import rank_on_ray
    run = rank_on_ray(RunSettings.build("一只猫 a cat", model="demo"), paths, address="local", workers=2, out_dir="results/")
    run.ranking.ranked()
"""

from .command import add_ray_arguments, asked_for, run_rank_command

_DRIVER_NAMES = ("RayUnavailable", "ScaleOutError", "ScaleOutRun", "rank_on_ray")


def __getattr__(name: str):
    if name in _DRIVER_NAMES:
        from . import driver

        return getattr(driver, name)
    if name == "OutDirError":
        from .shards import OutDirError

        return OutDirError
    raise AttributeError(name)


__all__ = ["OutDirError", *_DRIVER_NAMES, "add_ray_arguments", "asked_for", "run_rank_command"]
