"""The `spul` command line. Library code lives in `trainer`, `prompts_store` and `service`."""

from pathlib import Path

# Shipped reference model and demo profiles (see README: "The reference world").
REFERENCE_DIR = Path(__file__).parent / "reference"
