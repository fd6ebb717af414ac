"""Which pyproject extra installs a module: a subcommand that needs one says what to install,
instead of ending in an ImportError traceback."""

import importlib.util
from collections.abc import Mapping

# An ONNX Runtime: the `cpu` extra (onnxruntime), or `gpu` (onnxruntime-gpu) on an NVIDIA GPU.
RUNTIME = {"onnxruntime": "cpu"}


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False


def missing_extras(modules: Mapping[str, str]) -> str | None:
    """What to install when any of `modules` (module → the extra that installs it) is missing,
    or None."""
    missing = [name for name in modules if not importable(name)]
    if not missing:
        return None
    extras = ",".join(dict.fromkeys(modules[name] for name in missing))
    named = [f"the {extra} extra" for extra in dict.fromkeys(modules[n] for n in missing)]
    what = [name for name in named if name != "the cpu extra"]
    if "onnxruntime" in missing:
        what.append("an ONNX Runtime")
    runtime = " ('gpu' instead of 'cpu' with an NVIDIA GPU)" if "cpu" in extras else ""
    return (
        f"{' and '.join(what)} {'are' if len(what) > 1 else 'is'} not installed (no module "
        f"{', '.join(missing)}): pip install 'dipr[{extras}]'"
        f"{runtime}; in a checkout: .venv/bin/pip install -e '.[{extras}]'"
    )
