"""`spul import-peft` / `spul export-peft`: move soft prompts between PEFT checkpoints and artifacts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from spul import catalog

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    imp = subparsers.add_parser(
        "import-peft",
        help="turn a PEFT prompt-tuning / P-tuning checkpoint into a prompt artifact",
        description=(
            "Read DIR/adapter_config.json + DIR/adapter_model.safetensors (PeftModel.save_pretrained), "
            "compute the (P, H) prompt once and write it as an artifact bound to --base. "
            "Pickled adapter_model.bin files are refused."
        ),
    )
    imp.add_argument("directory", type=Path, metavar="DIR", help="PEFT checkpoint directory")
    imp.add_argument("--base", required=True, help=f"base model: {catalog.HELP}")
    imp.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="artifact to write (.safetensors)"
    )
    imp.add_argument("--store", type=Path, metavar="ROOT", help="also publish the artifact into this store")
    imp.add_argument("--profile", help="profile id (default: the checkpoint directory's name)")
    imp.set_defaults(func=run_import)

    exp = subparsers.add_parser(
        "export-peft",
        help="write a prompt artifact as a PEFT prompt-tuning checkpoint",
        description=(
            "Write OUT/adapter_config.json + OUT/adapter_model.safetensors (PEFT prompt tuning, CAUSAL_LM) "
            "that PeftModel.from_pretrained loads."
        ),
    )
    exp.add_argument("artifact", type=Path, metavar="FILE", help="prompt artifact (.safetensors)")
    exp.add_argument(
        "--base", required=True, help="base model the artifact was trained for (checked by fingerprint)"
    )
    exp.add_argument("--out", required=True, type=Path, metavar="DIR", help="checkpoint directory to write")
    exp.set_defaults(func=run_export)


def run_import(args: argparse.Namespace) -> int:
    from spul.errors import UserError
    from spul.models import ModelLoadError
    from spul.prompts_store import InvalidProfileId, PromptStore, validate_profile_id
    from spul.trainer.peft_interop import PeftInteropError, import_peft

    profile = args.profile or args.directory.resolve().name
    try:
        validate_profile_id(profile)
        sha = import_peft(args.directory, base=args.base, out=args.out, profile=profile)
    except InvalidProfileId as err:
        raise UserError(f"{err}; pass a valid --profile") from err
    except (PeftInteropError, ModelLoadError) as err:
        raise UserError(str(err)) from err
    log.info("wrote %s (sha256 %s, profile %s)", args.out, sha, profile)
    if args.store is not None:
        info = PromptStore(args.store).put(profile, args.out.read_bytes())
        log.info("published %s version %d in %s", profile, info.version, args.store)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from spul.errors import UserError
    from spul.models import ModelLoadError
    from spul.trainer.peft_interop import PeftInteropError, export_peft

    try:
        out = export_peft(args.artifact, base=args.base, out_dir=args.out)
    except (PeftInteropError, ModelLoadError) as err:
        raise UserError(str(err)) from err
    log.info("wrote PEFT prompt-tuning checkpoint %s", out)
    return 0
