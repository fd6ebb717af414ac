"""Where the test fixtures are."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PHOTOS = FIXTURES / "photos"  # openly licensed photos (LICENSES.md)
GOLDEN = FIXTURES / "golden"  # outputs of the original MoveNet graph (README.md)
