"""`dipr serve`: run the HTTP service with uvicorn (one process per GPU, or front-end processes
feeding one inference process: DIPR_FRONTEND_PROCESSES; scale by replicas)."""

import argparse
import logging
import logging.config
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dipr.extras import RUNTIME, missing_extras
from dipr.service.preflight import (
    FLAG_VARIABLES,
    gpu_unused,
    jpeg_decoder_problem,
    settings_problem,
    unavailable_addresses,
    unreadable_files,
)

# Exit statuses of a start refused before anything loads: a setting, a file or a missing runtime
# that can never work (as argparse's usage errors), or an address someone else holds right now.
BAD_CONFIGURATION = 2
ADDRESS_UNAVAILABLE = 1

if TYPE_CHECKING:
    from dipr.service.settings import Settings

log = logging.getLogger("dipr.service")


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
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from dipr.service.logs import logging_config
    from dipr.service.memory import limit_malloc_arenas
    from dipr.service.settings import Settings

    limit_malloc_arenas()  # before any thread of the service exists
    flags = {flag for flag in FLAG_VARIABLES if getattr(args, flag) is not None}
    for flag in flags:
        os.environ[FLAG_VARIABLES[flag]] = str(getattr(args, flag))
    # Everything that can be known wrong is refused here, in one line, before the model loads
    # (seconds) and before uvicorn binds (after the load): a bad start must not look like a
    # slow one, nor leave a replica up and unready for ever.
    try:
        settings = Settings()
    except ValidationError as error:
        return _fail(settings_problem(error, flags), BAD_CONFIGURATION)
    except SettingsError as error:  # a value pydantic-settings could not even parse
        return _fail(str(error), BAD_CONFIGURATION)
    problem = missing_extras(RUNTIME) or jpeg_decoder_problem(settings.jpeg_decoder)
    if problem is not None:
        return _fail(problem, BAD_CONFIGURATION)
    log_config = logging_config(settings.log_format, args.log_level)
    logging.config.dictConfig(log_config)  # uvicorn applies the same again; the warning needs it
    warning = gpu_unused(settings.provider)
    if warning is not None:
        log.warning(warning)
    problem = unreadable_files(settings, flags)
    if problem is not None:
        return _fail(problem, BAD_CONFIGURATION)
    problem = unavailable_addresses(settings, flags)
    if problem is not None:
        return _fail(problem, ADDRESS_UNAVAILABLE)
    if settings.frontend_processes > 0:
        if args.workers > 1:
            return _fail(
                "--workers and DIPR_FRONTEND_PROCESSES both ask for several processes: "
                "with front-end processes, set only DIPR_FRONTEND_PROCESSES",
                BAD_CONFIGURATION,
            )
        if settings.inference_socket is not None:
            return _fail(
                "DIPR_INFERENCE_SOCKET is dipr serve's own, for its front-end processes: unset it",
                BAD_CONFIGURATION,
            )
    if (
        args.workers > 1 or settings.frontend_processes > 0
    ) and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Must be set before any worker imports prometheus_client.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dipr-metrics-")
    if settings.metrics_port is not None and (args.workers > 1 or settings.frontend_processes > 1):
        # One port cannot be opened by several processes: this one serves their sum.
        os.environ["DIPR_METRICS_PORT_SUPERVISED"] = "true"
        from dipr.service.metrics import supervised_metrics

        with supervised_metrics(settings.metrics_port, settings.host):
            return _run_servers(args, settings, log_config)
    return _run_servers(args, settings, log_config)


def _run_servers(args: argparse.Namespace, settings: "Settings", log_config: Any) -> int:
    import uvicorn

    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": args.log_level,
        "log_config": log_config,
        "access_log": False,  # dipr writes its own, with request ids
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
        # uvicorn's httptools protocol, plus closing clients that stall mid-request
        # (DIPR_CLIENT_TIMEOUT_S); by import string, so that spawned workers load it too.
        "http": "dipr.service.http.connections:WatchedHttpProtocol",
    }
    if settings.frontend_processes > 0:
        return _serve_frontends(settings, args.log_level, common)
    if args.workers > 1:
        # uvicorn's supervisor runs the workers; each app puts the drain before its exit.
        factory = "dipr.service.http.app:create_worker_app"
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


def _serve_frontends(settings: "Settings", log_level: str, common: dict[str, Any]) -> int:
    """The front-end layout: one inference process holds the models; DIPR_FRONTEND_PROCESSES
    uvicorn processes serve HTTP, decode and crop, and hand it their crops (shared memory)."""
    import uvicorn

    from dipr.service.inference_supervisor import InferenceSupervisor

    folder = Path(tempfile.mkdtemp(prefix="dipr-inference-"))  # 0700: our user's alone
    socket_path = folder / "socket"
    inference = InferenceSupervisor(socket_path, log_level)
    inference.start()
    # Read by the front-ends' settings: each connects there instead of loading the models.
    os.environ["DIPR_INFERENCE_SOCKET"] = str(socket_path)
    try:
        if settings.frontend_processes == 1:
            from dipr.service.http.app import create_app
            from dipr.service.server import DrainingServer
            from dipr.service.settings import Settings

            app = create_app(Settings())
            server = DrainingServer(
                uvicorn.Config(app, **common), app.state.runtime.begin_drain, settings.drain_delay_s
            )
            server.run()
        else:
            # uvicorn's supervisor runs the front-ends; each app puts the drain before its exit.
            factory = "dipr.service.http.app:create_worker_app"
            uvicorn.run(factory, factory=True, workers=settings.frontend_processes, **common)
    finally:
        inference.stop(settings.shutdown_grace_s)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _fail(message: str, status: int) -> int:
    print(f"dipr serve: {message}", file=sys.stderr)
    return status
