"""The core (``medrecon``) stands alone: it imports and reconstructs with ``operators`` and ``pipelines``
unimportable, in a fresh interpreter.

The child process blocks both packages (a meta-path finder refusing them and their submodules, and None
entries in sys.modules), checks that the block works, imports every core package, and runs FastSampler with
z-TV (lam > 0) on an analytic problem built from medrecon.linop alone: a Gaussian prior N(m, v) per pixel
(GaussianDenoiser, its exact denoiser) and a masked identity (a MatrixOperator whose rows are pixels of the
slice), noiseless. The noiseless posterior mean is y on the sampled pixels and m elsewhere; the zero-filled
(adjoint) estimate is y and 0. With |m| = 1 and v = 0.02 a posterior sample is within about sqrt(0.7 v) = 0.12
of the posterior mean per unsampled pixel (FastSampler's variance ratio, tests/test_samplers.py), the adjoint
1.0 away: the sample must be closer than 0.3x the adjoint's RMSE, and fit the sampled pixels.
"""
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(r'''
    import importlib.abc, json, sys

    BLOCKED = ("operators", "pipelines")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the core must not need it")
            return None

    sys.meta_path.insert(0, Block())
    for name in BLOCKED:
        sys.modules[name] = None
    for name in BLOCKED:                       # the block itself works
        try:
            __import__(name + ".x")
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} is importable despite the block")

    import medrecon, medrecon.io, medrecon.linop, medrecon.metrics, medrecon.priors, medrecon.solvers  # noqa
    import medrecon.volume  # noqa
    import torch
    from medrecon.linop import MatrixOperator
    from medrecon.priors import GaussianDenoiser, VESchedule
    from medrecon.solvers import FastSampler

    Z, HW, MEAN, VAR = 8, 16, 1.0, 0.02
    g = torch.Generator().manual_seed(0)
    sampled = torch.randperm(HW * HW, generator=g)[: HW * HW // 4]             # 4x undersampling
    A = MatrixOperator(torch.eye(HW * HW)[sampled], in_shape=(HW, HW), out_shape=(len(sampled),))
    x_true = MEAN + VAR ** 0.5 * torch.randn(Z, HW, HW, generator=g)
    y = A.forward(x_true)
    mask = torch.zeros(HW * HW, dtype=torch.bool)
    mask[sampled] = True
    mask = mask.view(HW, HW)
    post_mean = torch.where(mask, x_true, torch.full_like(x_true, MEAN))
    adjoint = A.adjoint(y)
    prior = GaussianDenoiser(MEAN, VAR, VESchedule(0.01, 20.0, 1000))
    solver = FastSampler(prior, A, y, n_steps=20, lam=0.01, rho=1.0, seed=0)
    x = solver.run()
    rmse = lambda a: float((a - post_mean).pow(2).mean().sqrt())  # noqa: E731
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None)
    print(json.dumps({"uses_tv": solver.dc.uses_tv, "finite": bool(torch.isfinite(x).all()),
                      "rmse_sample": rmse(x), "rmse_adjoint": rmse(adjoint),
                      "data_misfit": float((A.forward(x) - y).abs().max()), "loaded": loaded}))
''')


def test_core_runs_without_operators_and_pipelines():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [], out
    assert out["uses_tv"] and out["finite"], out
    assert out["rmse_adjoint"] > 0.8, out                       # sqrt(3/4): |m| = 1 on 3/4 of the pixels
    assert out["rmse_sample"] < 0.3 * out["rmse_adjoint"], out
    assert out["data_misfit"] < 0.05, out
