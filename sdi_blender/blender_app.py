"""Find a Blender executable, install the add-on into it, and open a run's mesh in it.

Standard library only, importing neither torch nor bpy: vendor_setup.py loads this
module before anything is installed, the ``sdi-blender`` command uses it, and it
ships in the add-on zip. Blender is driven through its command line only:
``--command extension install-file`` (Blender 4.2+) and ``--python-expr``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .catalog import mesh_file
from .errors import UserError

# The add-on's module name once installed from a zip into Blender's default user repository.
REPO_ID = "user_default"
ADDON_MODULE = f"bl_ext.{REPO_ID}.sdi_blender"
INSTALL_TIMEOUT_S = 300.0


class BlenderError(UserError):
    """Blender is missing where named, or refused to install the add-on: one line."""


def standard_places() -> list[Path]:
    """Where Blender's installers put it, most recent first (PATH is searched before these)."""
    if sys.platform == "darwin":
        app = Path("Applications", "Blender.app", "Contents", "MacOS", "Blender")
        return [Path("/") / app, Path.home() / app]
    if os.name == "nt":
        root = Path(os.environ.get("ProgramFiles", r"C:\Program Files"), "Blender Foundation")
        found = root.glob("Blender*/blender.exe")  # "Blender 4.2", "Blender 5.0", ...
        return sorted(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)], reverse=True)
    return [Path("/snap/bin/blender")]


def _executable(path: str) -> str | None:
    """``path`` (or a name on PATH) as a runnable file; a macOS .app bundle means its binary."""
    path = os.path.expanduser(path)
    if path.endswith(".app") and os.path.isdir(path):
        path = os.path.join(path, "Contents", "MacOS", "Blender")
    return shutil.which(path)  # None for a directory, a missing or a non-executable file


def find_blender(explicit: str | None = None) -> str | None:
    """The Blender to use: ``explicit``, else $BLENDER, else ``blender`` on PATH, else a standard place.

    Raises BlenderError when ``explicit`` or $BLENDER names no executable, since the
    user asked for that one; returns None when Blender is simply not found.
    """
    for source, value in (("--blender ", explicit), ("$BLENDER=", os.environ.get("BLENDER"))):
        if value:
            found = _executable(value)
            if found is None:
                raise BlenderError(f"{source}{value} is not an executable file", "give the Blender program's path")
            return found
    found = shutil.which("blender")
    if found:
        return found
    return next((str(p) for p in standard_places() if _executable(str(p))), None)


def _gist(output: str) -> str:
    """The line of Blender's output that says what went wrong: its last error, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"(ERROR\b|\w+(Error|Exception): )", line)]
    return (errors or lines or ["no output"])[-1]


def _run_blender(blender: str, args: list[str], what: str, timeout: float) -> str:
    """Run Blender to completion; its combined output, or BlenderError naming ``what`` failed."""
    try:
        proc = subprocess.run(
            [blender, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise BlenderError(f"{what}: Blender {blender} did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise BlenderError(f"{what}: cannot run Blender {blender}: {exc}") from None
    # install-file exits 0 even when it fails, so its "ERROR ..." lines count as failure too.
    if proc.returncode != 0 or re.search(r"^ERROR\b", proc.stdout, re.M):
        raise BlenderError(f"{what} failed in Blender {blender}: {_gist(proc.stdout)}")
    return proc.stdout


def install_extension(
    blender: str, zip_path: Path, server_python: str | None, timeout: float = INSTALL_TIMEOUT_S
) -> None:
    """Install and enable the add-on zip in ``blender``'s user repository and store ``server_python``
    in its preferences (left as it is when None). Reinstalling over an older copy is fine.

    No --factory-startup: the point is to change the user's own preferences.
    """
    _run_blender(
        blender,
        ["--command", "extension", "install-file", "--repo", REPO_ID, "--enable", str(Path(zip_path).absolute())],
        "installing the add-on",
        timeout,
    )
    if server_python is None:
        return
    # A KeyError here means the add-on did not get enabled; --python-exit-code makes that a failure.
    code = (
        f"import bpy; addon = bpy.context.preferences.addons[{ADDON_MODULE!r}]; "
        f"addon.preferences.server_python = {server_python!r}; bpy.ops.wm.save_userpref()"
    )
    _run_blender(
        blender,
        ["--background", "--python-exit-code", "1", "--python-expr", code],
        "storing the server python in the add-on preferences",
        timeout,
    )


def import_expression(run_dir: Path) -> str:
    """Python for Blender that imports ``run_dir``'s exported mesh.

    The add-on's ``sdi.import_run`` places it as one object at the 3D cursor; a Blender
    without the add-on still gets the GLB through its own glTF importer.
    """
    run_dir = Path(run_dir).resolve()
    glb = run_dir / mesh_file("glb")
    return (
        f"import bpy; bpy.ops.sdi.import_run(run_dir={str(run_dir)!r}) if 'import_run' in dir(bpy.ops.sdi) "
        f"else bpy.ops.import_scene.gltf(filepath={str(glb)!r})"
    )


def open_in_blender(blender: str, run_dir: Path) -> subprocess.Popen:
    """Start Blender's window with ``run_dir``'s mesh imported; does not wait for it.

    Blender runs in its own session with no terminal I/O, so it outlives the command
    that started it and Ctrl-C there does not close it.
    """
    detach: dict[str, Any]
    if sys.platform == "win32":  # (not os.name: type checkers narrow on sys.platform)
        detach = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    else:
        detach = {"start_new_session": True}
    try:
        return subprocess.Popen(
            [blender, "--python-expr", import_expression(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **detach,
        )
    except OSError as exc:
        raise BlenderError(f"cannot start Blender {blender}: {exc}") from None
