"""Files shipped inside the package: the reference model, its demo profiles, and the real-model tasks."""

from pathlib import Path

# Shipped reference model (`model/`) and demo profiles (`profiles/`); see README "The reference world".
REFERENCE_DIR = Path(__file__).parent / "reference"

# Real-model tasks (`<task>/`: data splits, data.json, the trained `profile.safetensors`); README
# "SPUL on a real LLM".
TASKS_DIR = Path(__file__).parent / "tasks"


def demo_profiles(model: str | None) -> dict[str, Path]:
    """The shipped profiles trained for a named model, by profile id (empty for other models).

    The reference model has its demo profiles; a real-model task's profile
    (`tasks/<task>/profile.safetensors`) belongs to the model its artifact names, under the profile
    id the artifact carries (ids are unique over everything shipped, so one store can hold them all).
    """
    if model in (None, "reference"):
        return {p.stem: p for p in sorted((REFERENCE_DIR / "profiles").glob("*.safetensors"))}
    from spul.prompts_store import load_artifact  # torch: only when a real model's profiles are wanted

    found = {}
    for path in sorted(TASKS_DIR.glob("*/profile.safetensors")):
        meta = load_artifact(path).meta  # a few KB: checked like any artifact
        if meta.base_model == model:
            found[meta.profile or f"{path.parent.name}-forget"] = path
    return found
