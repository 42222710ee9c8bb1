"""Files shipped inside the package: the reference model, its demo profiles, and the real-model tasks."""

from pathlib import Path

# Shipped reference model (`model/`) and demo profiles (`profiles/`); see README "The reference world".
REFERENCE_DIR = Path(__file__).parent / "reference"

# Real-model tasks (`<task>/`: data splits, data.json, the trained `profile.safetensors`); README
# "SPUL on a real LLM".
TASKS_DIR = Path(__file__).parent / "tasks"


def demo_profiles(model: str | None) -> dict[str, Path]:
    """The shipped profiles trained for a named model, by profile id (empty for other models)."""
    if model in (None, "reference"):
        return {p.stem: p for p in sorted((REFERENCE_DIR / "profiles").glob("*.safetensors"))}
    if model == "smollm2-135m-instruct":
        return {f"{p.parent.name}-forget": p for p in sorted(TASKS_DIR.glob("*/profile.safetensors"))}
    return {}
