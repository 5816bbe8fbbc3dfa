"""Starting the server: ``sdi-blender serve`` and ``python -m sdi_blender.server``.

The command-line options, the checks made before anything starts (a loopback address
unless ``--allow-remote``: the token travels in clear text), the jobs folder's lock, the
token file, the log file, the job backend (here or on Ray), and the one ``listening`` line
a launcher waits for; then :class:`~.server.Server` runs until a shutdown request or a signal.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import secrets
import signal
import threading
from pathlib import Path
from typing import Any

from ...catalog import DEFAULT_MODEL, DEVICE_HELP, MODEL_HELP
from ...errors import UserError, run_command
from ...protocol import PROTOCOL_VERSION
from .lock import JobsFolderLock
from .server import Server

log = logging.getLogger("sdi_blender.server")


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``allow_remote``: the token travels in clear text."""
    if host == "localhost" or allow_remote:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UserError(
            f"refusing to listen on non-loopback address '{host}'",
            hint="use 127.0.0.1, or pass --allow-remote if the network is trusted",
        )


def write_token(path: Path, token: str) -> None:
    """Write ``token`` to a fresh file readable by the user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # O_CREAT's mode only applies to a new file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")


def _log_to(path: Path) -> None:
    """Log to a file: a parent that never reads our stderr pipe must not block the worker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def serve(
    *,
    host: str,
    port: int,
    token_file: Path | None,
    jobs_dir: Path | None,
    model: str | None,
    device: str,
    allow_remote: bool,
    model_roots: tuple[Path, ...] = (),
    ray: str | None = None,
    ray_cpus: float = 1.0,
) -> int:
    """Run the server until a shutdown request or SIGINT/SIGTERM; returns the exit code.

    ``ray``: None runs the jobs here, one at a time; ``auto`` or a cluster's address runs them
    on Ray (:mod:`.ray_pool`), one per GPU, or per ``ray_cpus`` CPUs on a cluster without GPUs."""
    check_host(host, allow_remote)
    if ray is not None:
        from ..util.ray_cluster import host_port, ray_module

        ray_module("serve --ray")  # missing: one line, before anything starts
        if ray != "auto":
            host_port(ray)
    from ..diffusion.model_source import check_model_name
    from ..util.cache import cache_root
    from ..util.devices import resolve_device
    from .jobs import JobManager  # torch: only once the arguments are known to be sound

    model = model or DEFAULT_MODEL
    check_model_name(model)
    dev = resolve_device(device)
    jobs_dir = (jobs_dir or cache_root() / "jobs").expanduser()
    if ray is not None:
        jobs_dir = jobs_dir.resolve()  # the actors' working folders are not ours
    token_file = (token_file or jobs_dir / "server.token").expanduser()
    token = secrets.token_urlsafe(32)
    lock = JobsFolderLock(jobs_dir)
    try:
        lock.acquire()  # before the token and the jobs: a second server must touch neither
    except OSError as exc:
        raise UserError(f"cannot use the jobs folder '{jobs_dir}': {exc.strerror or exc}") from exc
    try:
        backend, started_ray = _backend(ray, device, ray_cpus)  # a bad address fails here, before listening
    except BaseException:
        lock.release()
        raise
    try:
        server = Server((host, port), token, dev)
    except OSError as exc:
        _stop_ray(started_ray)
        lock.release()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        _log_to(jobs_dir / "server.log")
        roots = tuple(r.expanduser() for r in model_roots) if allow_remote else None
        server.manager = JobManager(
            jobs_dir, server.broadcast, device=dev, model=model, model_roots=roots, backend=backend
        )
        write_token(token_file, token)
    except OSError as exc:
        server.server_close()
        _stop_ray(started_ray)
        lock.release()
        raise UserError(f"cannot use '{exc.filename or jobs_dir}': {exc.strerror or exc}") from exc
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: threading.Thread(target=server.stop, daemon=True).start())
    bound_host, bound_port = server.server_address[:2]
    print(
        json.dumps(
            {
                "event": "listening",
                "host": bound_host,
                "port": bound_port,
                "pid": os.getpid(),
                "protocol": PROTOCOL_VERSION,
            }
        ),
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.close_connections()
        server.server_close()
        token_file.unlink(missing_ok=True)
        _stop_ray(started_ray)
        lock.release()
    return 0


def _backend(ray: str | None, device: str, ray_cpus: float) -> tuple[Any, bool]:
    """The jobs' backend factory (given the manager), and whether Ray was started here."""
    from .runner import LocalWorker

    if ray is None:
        return LocalWorker, False
    from functools import partial

    from ..util.ray_cluster import connect
    from .ray_pool import NAMESPACE, RayPool

    started = connect(ray, "serve --ray", namespace=NAMESPACE)
    return partial(RayPool, device=device, cpus=ray_cpus), started


def _stop_ray(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


DESCRIPTION = (
    "Serve generate/continue/export jobs over a local TCP socket (JSON lines). "
    'Prints one JSON line {"event": "listening", ...} when ready.'
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's options, for ``sdi-blender serve`` and ``python -m sdi_blender.server`` alike."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument("--token-file", type=Path, help="where to write the access token (default JOBS_DIR/server.token)")
    p.add_argument("--jobs-dir", type=Path, help="job folders (default ~/.cache/sdi-blender/jobs)")
    p.add_argument("--model", help=f"default model of generate jobs: {MODEL_HELP}")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (the token is sent in clear text)"
    )
    p.add_argument(
        "--model-root",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="with --allow-remote: a folder whose model folders clients may name (repeatable; "
        "otherwise remote clients get hub ids and built-in models only)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="auto|ADDRESS",
        help="run the jobs in parallel on Ray, one per GPU: auto (or no value): a local Ray, or the cluster "
        "RAY_ADDRESS names; HOST:PORT: that cluster's head (JOBS_DIR must be a path every node sees)",
    )
    p.add_argument(
        "--ray-cpus",
        type=float,
        default=1.0,
        metavar="N",
        help="with --ray on a cluster without GPUs (or --device cpu): CPUs per job (default 1)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve with parsed :func:`add_arguments` options."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"port must be between 0 and 65535, got {args.port}")
    if args.ray_cpus <= 0:
        raise UserError(f"--ray-cpus must be positive, got {args.ray_cpus}")
    return serve(
        host=args.host,
        port=args.port,
        token_file=args.token_file,
        jobs_dir=args.jobs_dir,
        model=args.model,
        device=args.device,
        allow_remote=args.allow_remote,
        model_roots=tuple(args.model_root),
        ray=args.ray,
        ray_cpus=args.ray_cpus,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m sdi_blender.server``: the server alone, without the CLI's other commands."""
    parser = argparse.ArgumentParser(prog="python -m sdi_blender.server", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: run_from_args(args))
