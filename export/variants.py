"""The default model's four precision and flip-test variants, exported side by side for `dipr eval
--variants` and `dipr bench --variants`: fp32, int8, flip, int8+flip. Each is written by `dipr
export` itself, so the int8 ones pass its accuracy gate (and are absent, with the reason, if not).
"""

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VARIANT_FLAGS: dict[str, tuple[str, ...]] = {
    "fp32": (),
    "int8": ("--int8",),
    "flip": ("--flip-test",),
    "int8+flip": ("--int8", "--flip-test"),
}


@dataclass(frozen=True)
class Variants:
    models: dict[str, Path]  # variant → ONNX file, in VARIANT_FLAGS order
    refused: dict[str, str]  # variant → what `dipr export` said


def export_variants(
    folder: Path, progress: Callable[[str], None] | None = None, arch: str | None = None
) -> Variants:
    """Export every variant of `arch` (default: the served default) into `folder`."""
    from dipr.cli import main as dipr

    models: dict[str, Path] = {}
    refused: dict[str, str] = {}
    for name, flags in VARIANT_FLAGS.items():
        path = folder / f"{name.replace('+', '-')}.onnx"
        arguments = ["export", *flags, "--skip-parity", "--output", str(path)]
        if arch:
            arguments += ["--arch", arch]
        printed, errors = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
            status = dipr(arguments)
        if status == 0:
            models[name] = path
        else:
            refused[name] = errors.getvalue().strip().splitlines()[-1]
        if progress:
            progress(f"{name}: " + ("exported" if status == 0 else refused[name]))
    return Variants(models, refused)
