"""`spul serve`: the FastAPI app under uvicorn; options override `SPUL_*` environment settings."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the model with unlearning profiles over HTTP",
        description="Serve a frozen model whose answers always carry an unlearning profile's soft prompt. "
        "Every option can also be set as an environment variable SPUL_<NAME> (e.g. SPUL_ADMIN_TOKEN). "
        "With no --model: the shipped reference model and its demo profiles.",
    )
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--model", help="Hugging Face model dir or id (default: the reference model)")
    parser.add_argument("--store", help="profile store directory (default ~/.cache/spul/store)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--default-profile", help="profile applied to requests that name none")
    parser.add_argument("--require-profile", action="store_true", default=None, help="refuse requests naming no profile")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--prefix-cache-bytes", type=int, help="0 disables the soft-prompt prefix cache")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from spul.errors import UserError
    from spul.service.app import create_app
    from spul.service.settings import Settings

    names = ("host", "port", "model", "store", "device", "dtype", "default_profile", "require_profile",
             "max_batch_size", "prefix_cache_bytes")
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        raise UserError(f"invalid settings: {err}") from err
    if settings.model is None:
        from spul.service.runtime import reference_paths

        model_dir, _ = reference_paths()
        if not (model_dir / "config.json").is_file():
            raise UserError(f"the reference model is missing from {model_dir}; pass --model PATH or reinstall")
    app = create_app(settings, exit_on_load_failure=True)
    log.info("serving on http://%s:%d (admin %s)", settings.host, settings.port,
             "enabled" if settings.admin else "disabled")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    return 0 if app.state.load_error is None else 1
