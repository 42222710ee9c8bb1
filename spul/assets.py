"""Files shipped inside the package: the reference model and its demo profiles."""

from pathlib import Path

# Shipped reference model (`model/`) and demo profiles (`profiles/`); see README "The reference world".
REFERENCE_DIR = Path(__file__).parent / "reference"
