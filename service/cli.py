"""`dipr serve`: run the HTTP service with uvicorn (one process per GPU; scale by replicas)."""

import argparse
import os
import tempfile
from pathlib import Path

# Flags → the settings' environment variables: every worker process reads the same settings.
FLAG_VARIABLES = {
    "host": "DIPR_HOST",
    "port": "DIPR_PORT",
    "model": "DIPR_MODEL_PATH",
    "provider": "DIPR_PROVIDER",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help=__doc__,
        description=__doc__ + " Every setting can also come from its "
        "DIPR_* environment variable (see the README); flags win.",
    )
    parser.add_argument("--host", help="default 127.0.0.1 (DIPR_HOST)")
    parser.add_argument("--port", type=int, help="default 8000 (DIPR_PORT)")
    parser.add_argument("--model", type=Path, help="ONNX model (DIPR_MODEL_PATH)")
    parser.add_argument(
        "--provider", choices=["auto", "cuda", "tensorrt", "cpu"], help="(DIPR_PROVIDER)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (metrics then aggregate across them)",
    )
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from dipr.service.logs import logging_config
    from dipr.service.memory import limit_malloc_arenas
    from dipr.service.settings import Settings

    limit_malloc_arenas()  # before any thread of the service exists
    for flag, variable in FLAG_VARIABLES.items():
        if getattr(args, flag) is not None:
            os.environ[variable] = str(getattr(args, flag))
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Must be set before any worker imports prometheus_client.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dipr-metrics-")
    settings = Settings()  # validates the configuration before anything starts
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": args.log_level,
        "log_config": logging_config(settings.log_format, args.log_level),
        "access_log": False,  # dipr writes its own, with request ids
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
        # uvicorn's httptools protocol, plus closing clients that stall mid-request
        # (DIPR_CLIENT_TIMEOUT_S); by import string, so that spawned workers load it too.
        "http": "dipr.service.http.connections:WatchedHttpProtocol",
    }
    if args.workers > 1:
        # uvicorn's supervisor runs the workers: plain shutdown, no drain delay.
        factory = "dipr.service.http.app:create_app"
        uvicorn.run(factory, factory=True, workers=args.workers, **common)
        return 0

    from dipr.service.http.app import create_app
    from dipr.service.server import DrainingServer

    app = create_app(settings)
    server = DrainingServer(
        uvicorn.Config(app, **common), app.state.runtime.begin_drain, settings.drain_delay_s
    )
    server.run()
    return 0
