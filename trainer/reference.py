"""Ship the reference world's base model and demo profiles inside the package, and check them.

The default world takes many minutes to build on 2 cores, so `spul serve` on a fresh clone
uses files shipped in `spul/reference/` instead:

    spul/reference/model/                      the world's base model (HF dir, safetensors)
    spul/reference/profiles/<task>-forget.safetensors   SPUL prompts trained with `spul train`
    spul/reference/manifest.json               how they were made, and what they must measure

The manifest records the sha256 of every data split (regenerated from the seed, no training
needed) and the metrics of every shipped prompt, so a test can check, metric for metric, that
the shipped files still match what `spul world build` + `spul train` produce.

    python -m trainer.reference --world WORLD --profile sentiment=S.safetensors \
        --profile qa=Q.safetensors --out spul/reference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def profile_name(task: str) -> str:
    return f"{task}-forget"


def split_digests(world_dir: Path) -> dict[str, dict[str, str]]:
    """sha256 of every data/<task>/<split>.jsonl of a world directory."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted((world_dir / "data").glob("*/*.jsonl")):
        out.setdefault(path.parent.name, {})[path.stem] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def shipped_build(world_dir: Path, size: str, seed: int, spec: dict[str, Any]) -> Path | None:
    """The shipped model directory when it is this world's recorded build, else None.

    It is when the world's size and seed are the recorded ones, every data split of
    ``world_dir`` has the recorded sha256, and every field of ``spec`` (``asdict(WorldSpec)``)
    equals the recorded spec's. The model is then what training on this data was measured to
    give; a from-scratch build on another CPU can differ (README "The reference world").
    """
    from spul.assets import REFERENCE_DIR

    path = REFERENCE_DIR / "manifest.json"
    if not path.is_file() or not (REFERENCE_DIR / "model" / "model.safetensors").is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    recorded = manifest.get("world", {})
    if (recorded.get("size"), recorded.get("seed")) != (size, seed):
        return None
    if split_digests(world_dir) != manifest.get("data_sha256"):
        return None
    return REFERENCE_DIR / "model" if _within(spec, recorded.get("spec") or {}) else None


def _within(spec: dict[str, Any], recorded: dict[str, Any]) -> bool:
    """Every key of ``spec`` (nested) is in ``recorded`` with an equal value."""
    for key, value in spec.items():
        if key not in recorded:
            return False
        other = recorded[key]
        if isinstance(value, dict):
            if not isinstance(other, dict) or not _within(value, other):
                return False
        elif value != other:
            return False
    return True


def copy_model(src: Path, dst: Path) -> None:
    """Copy a model directory's files (``MODEL_FILES`` present in ``src``) into ``dst``, readable (0644)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            (dst / name).chmod(0o644)


def regenerated_data(size: str, seed: int, out: Path) -> Path:
    """Write a world's splits again from its seed (no model training): the data half of a rebuild."""
    from spul.trainer.world import generate, spec_for, write_splits

    draft = generate(spec_for(size), seed)
    write_splits(out, draft.splits, draft.forget)
    return out


def ship(world_dir: Path, artifacts: dict[str, Path], out: Path) -> dict[str, Any]:
    """Copy the world's model and the given prompts (task -> artifact) into `out`, with a manifest."""
    from spul.prompts_store import load_artifact

    world = json.loads((world_dir / "world.json").read_text())
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=".ship-"))
    copy_model(world_dir / "model", staging / "model")
    (staging / "profiles").mkdir()
    profiles = {}
    for task, path in sorted(artifacts.items()):
        art = load_artifact(path)
        shutil.copy2(path, staging / "profiles" / f"{profile_name(task)}.safetensors")
        profiles[profile_name(task)] = {"task": task, "sha256": art.sha256,
                                        "training_config": art.meta.training_config,
                                        "eval_metrics": art.meta.eval_metrics}
    manifest = {
        "world": {"size": world["size"], "seed": world["seed"], "build_seconds": world.get("build_seconds"),
                  "spec": world.get("spec"), "forget_entities": world["forget_entities"]},
        "data_sha256": split_digests(world_dir),
        "base_metrics": world.get("base_metrics", {}),
        "profiles": profiles,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    # swap by renames: at every moment `out` is the old reference or the new one, never half of one
    old = out.with_name(f".old-{out.name}")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    for path in [out, *out.rglob("*")]:  # mkdtemp and atomic writes make 0700/0600; ship readable files
        path.chmod(0o755 if path.is_dir() else 0o644)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ship a world's model and SPUL prompts as the reference")
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--profile", action="append", default=[], metavar="TASK=FILE",
                        help="a trained prompt for a task, e.g. qa=qa.safetensors (repeatable)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "spul" / "reference")
    args = parser.parse_args(argv)
    artifacts = dict(item.split("=", 1) for item in args.profile)
    manifest = ship(args.world, {t: Path(p) for t, p in artifacts.items()}, args.out)
    print(json.dumps({k: manifest[k] for k in ("world", "profiles")}, indent=1)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
