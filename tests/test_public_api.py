"""``meshrec``'s public surface: small, documented, imported on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import meshrec


def test_import_meshrec_imports_nothing_heavy():
    code = "import sys, meshrec; print(sorted(m for m in ('torch', 'numpy', 'trimesh', 'lightning', 'moderngl') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", meshrec.__all__)
def test_every_public_name_resolves_and_is_documented(name):
    value = getattr(meshrec, name)
    assert name == "__version__" or (value.__doc__ or "").strip(), f"meshrec.{name} has no docstring"
    assert name in dir(meshrec)


def test_the_model_from_the_package_and_from_meshrec_models():
    from meshrec import HandMeshReconstructor, Prediction
    from meshrec.models import HandMeshReconstructor as from_models
    from meshrec.models.prediction import Prediction as prediction_class

    assert HandMeshReconstructor is from_models and Prediction is prediction_class


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'HandMeshReconstructer'"):
        meshrec.HandMeshReconstructer  # noqa: B018
    with pytest.raises(ImportError):
        exec("from meshrec import does_not_exist")
