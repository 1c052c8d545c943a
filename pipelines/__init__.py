"""Orchestration: configs, tasks (simulate / reconstruct / evaluate / batch) and the `medrecon` CLI.

Python API (mirrors the commands)::

    import pipelines
    pipelines.simulate("sparse_view_ct_8", "ct_series/", "out/sim")
    res = pipelines.reconstruct("sparse_view_ct_8", "out/sim/measurements.npz", "out/recon",
                                overrides=["solver.name=admm_tv"])
    pipelines.evaluate("out/sim/reference.nii.gz", "out/recon/recon.nii.gz")
    pipelines.batch("dicom_tree/", "recon_tree/", "sparse_view_ct_8", dry_run=True)

The names are imported on first use, so `medrecon --help` does not load torch.
"""
import importlib
from contextvars import ContextVar

#: where KEY=VALUE overrides come from, as config errors name them: "overrides" (the Python API's argument), or
#: "--set" while the command line runs (``pipelines.cli.main``); here, so that the CLI sets it without loading torch
OVERRIDES_FROM: ContextVar[str] = ContextVar("OVERRIDES_FROM", default="overrides")

_API = {"simulate": "tasks", "reconstruct": "tasks", "evaluate": "tasks", "batch": "batching",
        "load_config": "config"}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
