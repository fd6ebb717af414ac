"""The layering, read from the import statements: the core depends on none of its users, the
HTTP edge knows nothing of ONNX, evaluation and training nothing of the service, and the
serving path never loads torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(folder: str) -> dict[str, set[str]]:
    """For each module of a top-level folder: every module it imports (absolute names)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path.relative_to(ROOT).as_posix()] = names
    return found


def offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules of `folder` importing a forbidden package or one of its submodules."""

    def bad(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    found = {
        module: sorted(filter(bad, names)) for module, names in imported_modules(folder).items()
    }
    return {module: names for module, names in found.items() if names}


def test_the_core_imports_none_of_its_users_and_no_torch():
    users = ("dipr.service", "dipr.evaluation", "dipr.training", "dipr.export", "dipr.benchmarks")
    assert offenders("core", (*users, "torch", "safetensors", "onnx", "fastapi")) == {}


def test_evaluation_and_training_do_not_reach_into_the_service():
    assert offenders("evaluation", ("dipr.service",)) == {}
    assert offenders("training", ("dipr.service",)) == {}


def test_the_http_edge_knows_nothing_of_onnx_runtime():
    forbidden = ("onnxruntime", "dipr.service.backend", "dipr.service.batcher")
    assert offenders("service/http", forbidden) == {}


def test_the_batcher_and_the_pipeline_know_nothing_of_http():
    for module in ("batcher.py", "pipeline.py", "runtime.py", "stages"):
        found = {
            name: imports
            for name, imports in imported_modules("service").items()
            if name.startswith(f"service/{module}")
            and any(i.startswith(("fastapi", "starlette", "dipr.service.http")) for i in imports)
        }
        assert found == {}, found


@pytest.mark.parametrize(
    "module", ["dipr.service.http.app", "dipr.evaluation.cli", "dipr.core.prepare", "dipr.cli"]
)
def test_serving_and_evaluating_never_load_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
