"""The public surface: every name in ``mojax.__all__`` resolves, and the lazy layers load on demand."""

import importlib

import mojax


def test_all_names_resolve():
    for name in mojax.__all__:
        assert getattr(mojax, name) is not None, name


def test_subpackage_all_names_resolve():
    for pkg in ("losses", "metrics", "solvers", "models", "data", "train"):
        module = importlib.import_module(f"mojax.{pkg}")
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, (pkg, missing)


def test_reexports_are_the_library_functions():
    assert mojax.dpo_loss is mojax.losses.dpo_loss
    assert mojax.hypervolume is mojax.metrics.hypervolume
    assert mojax.min_norm_weights is mojax.solvers.min_norm_weights


def test_import_mojax_exposes_no_stray_names():
    # `from __future__ import annotations`, `importlib`, `typing.Any` once leaked into `dir(mojax)`.
    import os
    import subprocess
    import sys

    code = ("import mojax; d = {n for n in dir(mojax) if not (n.startswith('__') and n.endswith('__'))}; "
            "print(sorted(d - set(mojax.__all__)))")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert fresh.stdout.strip() == "[]", fresh.stdout
    # and after the lazy layers have loaded (submodules become attributes of the package)
    for name in ("models", "data", "train", "sharding", "simplex"):
        getattr(mojax, name)
    stray = {n for n in dir(mojax) if not (n.startswith("__") and n.endswith("__"))} - set(mojax.__all__)
    assert not stray, sorted(stray)
    assert all(getattr(mojax, n) is not None for n in mojax.__all__)
