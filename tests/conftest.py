import sys
from pathlib import Path

# Test helpers (e.g. serving.py) are imported as plain modules.
sys.path.insert(0, str(Path(__file__).parent))
