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
