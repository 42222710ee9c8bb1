"""`spul serve`: the FastAPI app under uvicorn; options override `SPUL_*` environment settings."""

from __future__ import annotations

import argparse
import logging

from spul import catalog

log = logging.getLogger(__name__)

EXIT_STARTUP_FAILED = 3  # the model or profiles could not load (a normal stop by SIGTERM exits 143)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the model with unlearning profiles over HTTP",
        description="Serve a frozen model whose answers always carry an unlearning profile's soft prompt. "
        "Every option can also be set as an environment variable SPUL_<NAME> (e.g. SPUL_ADMIN_TOKEN, "
        "SPUL_MAX_REQUEST_BYTES; see service/settings.py). With no --model: the shipped reference model "
        f"and its demo profiles. Exit status {EXIT_STARTUP_FAILED} when the model or profiles cannot load.",
    )
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--model", help=f"{catalog.HELP} (default: reference, with its demo profiles)")
    parser.add_argument("--store", help="profile store directory (default ~/.cache/spul/store)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: cuda when available")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="default auto")
    parser.add_argument("--default-profile", help="profile applied to requests that name none (default: none, "
                        "such requests are refused)")
    parser.add_argument("--require-profile", action="store_true", default=None,
                        help="refuse every request that names no profile, even with a default profile")
    parser.add_argument("--max-batch-size", type=int, help="rows per decode step (default 32)")
    parser.add_argument("--engine", choices=["builtin", "vllm"],
                        help="builtin (default): run the model here; vllm: a gateway in front of vLLM servers "
                        "started with --enable-prompt-embeds (docs/deploy-vllm.md)")
    parser.add_argument("--vllm-url", dest="vllm_urls", action="append", metavar="URL",
                        help="a vLLM server for --engine vllm (repeat for several; profiles are routed by "
                        "consistent hashing)")
    parser.add_argument("--prefix-cache-bytes", type=int, help="soft-prompt prefix cache size in bytes (default 256 MiB); 0 disables it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from spul.errors import UserError
    from spul.service.app import create_app
    from spul.service.server import uvicorn_config
    from spul.service.settings import Settings

    names = ("host", "port", "model", "store", "device", "dtype", "default_profile", "require_profile",
             "max_batch_size", "prefix_cache_bytes", "engine", "vllm_urls")
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors(include_input=False)
        )
        raise UserError(f"invalid settings: {problems}") from None
    if settings.model is None:
        from spul.service.runtime import reference_paths

        model_dir, _ = reference_paths()
        if not (model_dir / "config.json").is_file():
            raise UserError(f"the reference model is missing from {model_dir}; pass --model PATH or reinstall")

    def stop() -> None:
        server.should_exit = True

    app = create_app(settings, on_load_failure=stop)
    server = uvicorn.Server(uvicorn_config(app, settings))
    log.info("serving on http://%s:%d, store %s, admin %s", settings.host, settings.port, settings.store,
             "enabled" if settings.admin else "disabled (set SPUL_ADMIN_TOKEN to enable it)")
    server.run()
    if app.state.load_error is not None:
        log.error("stopped: the server could not start (%s)", app.state.load_error)
        return EXIT_STARTUP_FAILED
    return 0
