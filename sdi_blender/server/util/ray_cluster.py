"""Joining a Ray cluster, for the commands that run on one (``serve --ray``; ``batch`` does the same).

Ray is an optional extra: importing it goes through :func:`ray_module`, which turns its absence
into one line saying how to install it. :func:`connect` refuses an address that nothing listens
at within seconds (Ray itself waits minutes for a head that is not there).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from ...errors import UserError


def ray_module(what: str = "this command") -> Any:
    """The ``ray`` module, or a one-line UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(
            f"{what} runs on Ray, which is not installed",
            hint=".venv/bin/pip install 'sdi-blender[ray]' (python vendor_setup.py --dev includes it)",
        ) from None
    return ray


def connect(address: str, what: str = "this command", **init: Any) -> bool:
    """Start a local Ray (``auto``: or the one RAY_ADDRESS names) or connect to the cluster at
    ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``); ``init``: more ``ray.init`` arguments.
    Returns whether this call started Ray (and so should shut it down); an already initialised
    Ray is used as it is."""
    ray = ray_module(what)
    if address != "auto":
        check_reachable(address)
    if ray.is_initialized():
        return False
    try:
        ray.init(
            address=None if address == "auto" else address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            **init,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise _unreachable(address, str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)) from None
    return True


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Raise unless something listens at ``address``."""
    try:
        socket.create_connection(host_port(address), timeout=timeout).close()
    except OSError as exc:
        raise _unreachable(address, exc.strerror or str(exc) or type(exc).__name__) from None


def host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``ray://HOST:PORT`` (Ray Client) as (host, port); a one-line error else."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray: '{address}' is not HOST:PORT", hint="e.g. --ray 10.0.0.1:6379, or auto")
    return host.strip("[]"), int(port)


def _unreachable(address: str, why: str) -> UserError:
    return UserError(
        f"cannot connect to the Ray cluster at '{address}': {why}",
        hint="start its head with 'ray start --head', or leave --ray out for a local Ray",
    )


def slot_resources(ray: Any, device: str, cpus: float = 1.0) -> tuple[dict[str, float], str, int]:
    """What one worker asks Ray for, the device it uses, and how many such workers the cluster
    holds: one per GPU where it has GPUs (unless ``device`` is cpu), else one per ``cpus`` CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device != "cpu" and gpus >= 1:
        return {"num_cpus": 1, "num_gpus": 1}, "auto", gpus
    return {"num_cpus": cpus, "num_gpus": 0}, "cpu", max(1, int(resources.get("CPU", 1) // cpus))
