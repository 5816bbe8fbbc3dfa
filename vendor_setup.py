#!/usr/bin/env python3
"""Create the Python environment that runs the sdi-blender generation server.

    python vendor_setup.py [--venv PATH] [--dev] [--print-python] [--build-addon]
                           [--blender PATH | --no-blender]

Makes a venv (default: .venv next to this file), installs torch first (a CUDA
build where an NVIDIA GPU is found, else a local CPU wheel if pip's find-links
offer one), then this package editable with the dependencies from
pyproject.toml (plus the ``dev`` extra with --dev). SDI_TORCH_SPEC=<requirement>
overrides the torch choice. A second run with the same inputs only checks a
stamp file. --dev also makes sure of /usr/bin/chromium, which the report
screenshot test drives: where it is missing, apt-get exists and we are root, it
runs ``apt-get install -y chromium``; otherwise, or when that fails, a warning
says so and the test skips (SDI_SKIP_CHROMIUM=1 leaves Chromium alone).
Then it writes the Blender add-on zip and, where it finds a Blender (--blender;
without it, only the plain set-up looks: $BLENDER, PATH, the
usual install places), installs the add-on there with the venv's Python in its
preferences.

Standard library only, so Blender's bundled Python can run it. The file must
stay parseable by Python 3.6 so that an old interpreter gets a one-line error
rather than a SyntaxError: no walrus, no ``match``, and typing's generics in
annotations (they are evaluated when the functions are defined).
"""

import argparse
import ast
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import urlparse
from urllib.request import url2pathname

REPO = Path(__file__).resolve().parent
MIN_PYTHON = (3, 11)
STAMP_NAME = "sdi-setup.json"
PREFIX = "[sdi-blender setup]"
WINDOWS_CUDA_INDEX = "https://download.pytorch.org/whl/cu126"
# torch-<version>+cpu-<python tags>-<abi tag>-<platform tags>.whl
CPU_WHEEL_RE = re.compile(r"^torch-(?P<ver>[^-]+\+cpu[^-]*)-(?P<py>[^-]+)-[^-]+-(?P<plat>[^-]+)\.whl$")
# Asks the venv's own interpreter, which may differ from the one running us.
PYINFO_CODE = (
    "import json, platform, sys; v = sys.version_info; print(json.dumps({"
    "'version': '%d.%d.%d' % v[:3], 'tag': 'cp%d%d' % v[:2], "
    "'platform': sys.platform, 'machine': platform.machine()}))"
)
IMPORT_CHECK_CODE = "import importlib.util, sdi_blender; assert importlib.util.find_spec('torch')"
CHROMIUM = Path("/usr/bin/chromium")
# apt-get's words when its package lists are missing or stale: then an update may help.
APT_NEEDS_UPDATE = ("Unable to locate package", "has no installation candidate", "apt-get update")


class SetupError(Exception):
    """A failure reported to the user as a single ``error:`` line."""


class TorchChoice(NamedTuple):
    """The torch requirement to install, extra pip arguments, and why."""

    spec: str
    pip_args: List[str]
    reason: str


class UsageParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one ``error:`` line (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print("error: {} (see --help)".format(message), file=sys.stderr)
        sys.exit(2)


def step(message: str) -> None:
    """Print a progress line; flushed so it stays in order with pip's output."""
    print("{} {}".format(PREFIX, message), flush=True)


def check_python(version: Sequence[int], where: str) -> None:
    """Raise SetupError if ``version`` (of the interpreter ``where``) is older than MIN_PYTHON."""
    if tuple(version[:2]) < MIN_PYTHON:
        found = ".".join(str(part) for part in version[:3])
        need = ".".join(str(part) for part in MIN_PYTHON)
        raise SetupError("Python {} found ({}), but sdi-blender needs Python {} or newer".format(found, where, need))


def venv_python(venv: Path, windows: bool = os.name == "nt") -> Path:
    """Path of the interpreter inside ``venv``."""
    return venv / "Scripts" / "python.exe" if windows else venv / "bin" / "python"


def check_venv_target(venv: Path) -> None:
    """Refuse a ``--venv`` that is a file or a non-empty directory that is no venv."""
    if venv.exists() and not venv.is_dir():
        raise SetupError("--venv {} is not a directory".format(venv))
    if venv.is_dir() and not (venv / "pyvenv.cfg").is_file() and any(venv.iterdir()):
        raise SetupError("--venv {} exists but is not a virtual environment (no pyvenv.cfg)".format(venv))


def create_venv(venv: Path) -> None:
    """Create ``venv`` with pip, using the interpreter that runs this script."""
    step("creating venv at {} with {}".format(venv, sys.executable))
    try:  # stderr is kept so that its gist lands in our single error line
        proc = subprocess.run([sys.executable, "-m", "venv", str(venv)], stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise SetupError("could not create the venv at {}: {}".format(venv, exc)) from exc
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["python -m venv exited with {}".format(proc.returncode)]
        raise SetupError("could not create the venv at {}: {}".format(venv, lines[-1].strip()))


def query_python(python: Path) -> Dict[str, str]:
    """Version, wheel tag, platform and machine of the interpreter ``python``."""
    try:
        proc = subprocess.run([str(python), "-I", "-B", "-c", PYINFO_CODE], capture_output=True, text=True)
    except OSError as exc:
        raise SetupError("cannot run the venv's python {}: {}".format(python, exc)) from exc
    if proc.returncode != 0:
        raise SetupError("the venv's python {} does not run (exit code {})".format(python, proc.returncode))
    return json.loads(proc.stdout)


def nvidia_present() -> bool:
    """True where ``nvidia-smi`` is on PATH and succeeds (a driver and a GPU)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return subprocess.run([exe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def parse_find_links(config_text: str, env: Mapping[str, str]) -> List[str]:
    """find-links entries from ``pip config list`` output and PIP_FIND_LINKS."""
    entries = []  # type: List[str]
    for line in config_text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key.strip().endswith("find-links"):
            continue
        try:
            value = str(ast.literal_eval(value.strip()))
        except (ValueError, SyntaxError):
            value = value.strip().strip("'\"")
        entries.extend(value.split())
    entries.extend(env.get("PIP_FIND_LINKS", "").split())
    return list(dict.fromkeys(entries))  # keeps order, drops duplicates


def local_paths(entries: Sequence[str]) -> List[Path]:
    """The find-links entries that are on this disk (plain paths or file:// URLs)."""
    paths = []
    for entry in entries:
        url = urlparse(entry)
        if url.scheme == "file":
            paths.append(Path(url2pathname(url.path)))  # handles Windows drives (/C:/x) too
        elif len(url.scheme) <= 1:  # a plain path; one letter is a Windows drive
            paths.append(Path(entry))
    return paths


def pip_find_links(python: Path, env: Mapping[str, str]) -> List[Path]:
    """Local find-links locations as the venv's pip sees them."""
    proc = subprocess.run([str(python), "-B", "-m", "pip", "config", "list"], capture_output=True, text=True)
    return local_paths(parse_find_links(proc.stdout if proc.returncode == 0 else "", env))


def _wheel_fits(match: "re.Match[str]", pyinfo: Mapping[str, str]) -> bool:
    """Whether a parsed wheel name suits the venv's Python tag, OS and CPU."""
    if pyinfo["tag"] not in match.group("py").split("."):
        return False
    family = {"linux": "linux", "win32": "win", "darwin": "macosx"}.get(pyinfo["platform"], pyinfo["platform"])
    machine = pyinfo["machine"].lower()
    return any(family in plat and plat.endswith(machine) for plat in match.group("plat").split("."))


def _version_key(version: str) -> List[int]:
    return [int(part) for part in re.findall(r"\d+", version.split("+")[0])]


def find_cpu_wheel(locations: Sequence[Path], pyinfo: Mapping[str, str]) -> Optional[str]:
    """Highest version of a fitting ``torch-*+cpu-*.whl`` in ``locations``, if any."""
    versions = []
    for location in locations:
        try:
            files = list(location.iterdir()) if location.is_dir() else [location]
        except OSError:  # an unreadable entry is pip's problem, not a reason to stop
            continue
        for file in files:
            match = CPU_WHEEL_RE.match(file.name)
            if match and _wheel_fits(match, pyinfo):
                versions.append(match.group("ver"))
    return max(versions, key=_version_key) if versions else None


def choose_torch(
    env: Mapping[str, str], pyinfo: Mapping[str, str], nvidia: bool, find_links: Sequence[Path]
) -> TorchChoice:
    """Pick the torch requirement for this machine (see the module docstring)."""
    override = env.get("SDI_TORCH_SPEC", "").strip()
    if override:
        return TorchChoice(override, [], "SDI_TORCH_SPEC is set")
    if nvidia and pyinfo["platform"] == "win32":
        # PyPI's Windows wheels are CPU-only; the CUDA ones live on PyTorch's index.
        return TorchChoice(
            "torch", ["--index-url", WINDOWS_CUDA_INDEX], "NVIDIA GPU found: CUDA build from PyTorch's index"
        )
    if nvidia:
        return TorchChoice("torch", [], "NVIDIA GPU found: PyPI's torch, a CUDA build")
    version = find_cpu_wheel(find_links, pyinfo)
    if version:
        return TorchChoice("torch==" + version, [], "no NVIDIA GPU; pip's find-links hold a CPU wheel")
    return TorchChoice(
        "torch", [], "no NVIDIA GPU and no local CPU wheel: whatever pip offers (set SDI_TORCH_SPEC to choose)"
    )


def stamp_data(dev: bool, choice: TorchChoice, pyinfo: Mapping[str, str]) -> Dict[str, object]:
    """What an installation depends on; a change in any of it means reinstall."""
    pyproject = (REPO / "pyproject.toml").read_bytes()
    return {
        "pyproject_sha256": hashlib.sha256(pyproject).hexdigest(),
        "repo": str(REPO),
        "dev": dev,
        "torch": [choice.spec] + list(choice.pip_args),
        "python": pyinfo["version"],
    }


def stamp_matches(venv: Path, data: Mapping[str, object]) -> bool:
    """Whether the stamp in ``venv`` records exactly ``data``."""
    try:
        return json.loads((venv / STAMP_NAME).read_text(encoding="utf-8")) == data
    except (OSError, ValueError):
        return False


def write_stamp(venv: Path, data: Mapping[str, object]) -> None:
    """Write the stamp atomically, so an interrupted write never matches."""
    tmp = venv / (STAMP_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(str(tmp), str(venv / STAMP_NAME))


def imports_ok(python: Path) -> bool:
    """Whether the venv imports sdi_blender and has torch; -I keeps cwd off sys.path."""
    return subprocess.run([str(python), "-I", "-B", "-c", IMPORT_CHECK_CODE], capture_output=True).returncode == 0


def pip_install(python: Path, args: Sequence[str], step_name: str, package: str) -> None:
    """Run ``pip install args`` in the venv, output passed through."""
    step("{}: pip install {}".format(step_name, " ".join(args)))
    code = subprocess.run([str(python), "-m", "pip", "install"] + list(args)).returncode
    if code != 0:
        raise SetupError("step '{}' failed: pip could not install {} (exit code {})".format(step_name, package, code))


def install(venv: Path, python: Path, dev: bool, choice: TorchChoice) -> None:
    """Install torch, then this package editable; torch first so pip keeps that build."""
    (venv / STAMP_NAME).unlink(missing_ok=True)  # an interrupted install must not look done
    pip_install(python, choice.pip_args + [choice.spec], "installing torch", choice.spec)
    target = str(REPO) + ("[dev]" if dev else "")
    pip_install(python, ["-e", target], "installing sdi-blender", "sdi-blender" + ("[dev]" if dev else ""))
    if not imports_ok(python):
        raise SetupError("step 'checking the install' failed: the venv cannot import sdi_blender and torch")


# The Blender side needs no torch code: the server runs from the venv, not from Blender.
ADDON_SKIP = ("server", "__pycache__", "cli.py", "blender_app.py")


def addon_files() -> List[Tuple[Path, str]]:
    """(file, name in the zip) of the add-on: the package's Blender-side files at the root."""
    package = REPO / "sdi_blender"
    found = [(REPO / "blender_manifest.toml", "blender_manifest.toml")]
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if path.is_file() and not set(rel.parts) & set(ADDON_SKIP) and path.suffix != ".pyc":
            found.append((path, rel.as_posix()))
    return found


def addon_zip_bytes(files: Sequence[Tuple[Path, str]]) -> bytes:
    """A deterministic zip (fixed timestamps, sorted names), so a rebuild is byte-identical."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in sorted(files, key=lambda item: item[1]):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return buf.getvalue()


def build_addon(dist: Path) -> Path:
    """Write dist/sdi_blender-<version>.zip for Blender's "Install from Disk"; skip if unchanged."""
    import tomllib  # 3.11+, which check_python has ensured

    manifest = tomllib.loads((REPO / "blender_manifest.toml").read_text(encoding="utf-8"))
    target = dist / "{}-{}.zip".format(manifest["id"], manifest["version"])
    data = addon_zip_bytes(addon_files())
    if target.is_file() and target.read_bytes() == data:
        step("add-on {} is up to date".format(target))
        return target
    dist.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(str(tmp), str(target))
    step("wrote the Blender add-on {}".format(target))
    return target


def _blender_app() -> ModuleType:
    """sdi_blender.blender_app, from this checkout: imported only after the Python check
    (it is 3.11 code), and before anything is installed, hence the path."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from sdi_blender import blender_app

    return blender_app


def locate_blender(explicit: Optional[str]) -> Optional[str]:
    """The Blender to install into (see blender_app.find_blender); a bad explicit one is a SetupError."""
    app = _blender_app()
    try:
        return app.find_blender(explicit)
    except app.BlenderError as exc:
        raise SetupError(exc.one_line()) from exc


def install_into_blender(blender: str, zip_path: Path, server_python: Optional[Path]) -> None:
    """Install and enable the add-on in ``blender``, its preferences pointing at ``server_python``.

    Done on every run that finds Blender (two short background starts): the user may
    have removed or changed the add-on since, and Blender replaces an installed copy.
    """
    app = _blender_app()
    try:
        app.install_extension(blender, zip_path, None if server_python is None else str(server_python))
    except app.BlenderError as exc:
        raise SetupError(exc.one_line()) from exc
    where = "" if server_python is None else "; its server python is {}".format(server_python)
    step("the add-on is installed and enabled in Blender {}{}".format(blender, where))


def warn(message: str) -> None:
    """A problem that does not stop the set-up, as one line on stderr."""
    print("warning: {}".format(message), file=sys.stderr, flush=True)


def run_apt(args: Sequence[str]) -> Tuple[int, str]:
    """Run an apt-get command quietly and non-interactively: (exit code, its output)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True
        )
    except OSError as exc:
        return 1, str(exc)
    return proc.returncode, proc.stdout


def ensure_chromium(
    present: bool, apt_get: Optional[str], root: bool, run: Callable[[Sequence[str]], Tuple[int, str]] = run_apt
) -> bool:
    """Install Chromium with apt-get where it is missing and we may (see the module docstring).

    Returns whether it is there afterwards; every failure is a warning, never a SetupError.
    """
    skip = "the report screenshot test will skip"
    if present:
        return True
    if apt_get is None:
        warn("no {} and no apt-get: install Chromium by hand, or {}".format(CHROMIUM, skip))
        return False
    if not root:
        warn("no {}: run 'sudo apt-get install chromium' (set-up does only as root), or {}".format(CHROMIUM, skip))
        return False
    step("installing Chromium for the report screenshot test: apt-get install -y chromium")
    install = [apt_get, "install", "-y", "-q", "chromium"]
    code, output = run(install)
    if code != 0 and any(words in output for words in APT_NEEDS_UPDATE):
        step("the package lists are missing or stale: apt-get update, then again")
        run([apt_get, "update", "-q"])
        code, output = run(install)
    if code != 0:
        last = (output.strip().splitlines() or ["exit code {}".format(code)])[-1]
        warn("apt-get could not install Chromium ({}); {}".format(last.strip(), skip))
        return False
    return True


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = UsageParser(prog="vendor_setup.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--venv", type=Path, default=REPO / ".venv", help="where the venv goes (default: .venv beside this script)"
    )
    parser.add_argument("--dev", action="store_true", help="also install the test tools (the dev extra)")
    parser.add_argument("--print-python", action="store_true", help="print the venv's python path; install nothing")
    parser.add_argument(
        "--build-addon", action="store_true", help="only write the Blender add-on zip (the full set-up writes it too)"
    )
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="where the add-on zip goes (default: dist)")
    blender = parser.add_mutually_exclusive_group()
    blender.add_argument(
        "--blender",
        metavar="PATH",
        help="install the add-on into this Blender (without it, only the plain set-up looks "
        "for one: $BLENDER, blender on PATH, the usual install places)",
    )
    blender.add_argument("--no-blender", action="store_true", help="do not look for Blender or install into it")
    return parser.parse_args(argv)


def setup(venv: Path, dev: bool, env: Mapping[str, str]) -> None:
    """Create or reuse the venv and install into it unless it is up to date."""
    check_venv_target(venv)
    python = venv_python(venv)
    if not python.exists():
        create_venv(venv)
    else:
        step("reusing venv at {}".format(venv))
    pyinfo = query_python(python)
    check_python([int(part) for part in pyinfo["version"].split(".")], str(python))
    choice = choose_torch(env, pyinfo, nvidia_present(), pip_find_links(python, env))
    step("torch build: {} ({})".format(" ".join(choice.pip_args + [choice.spec]), choice.reason))
    data = stamp_data(dev, choice, pyinfo)
    if stamp_matches(venv, data) and imports_ok(python):
        step("environment at {} is up to date; nothing to do".format(venv))
        return
    install(venv, python, dev, choice)
    write_stamp(venv, data)
    step("done; server python: {}".format(python))


def main(argv: Optional[Sequence[str]] = None, version_info: Sequence[int] = sys.version_info) -> int:
    """Entry point; returns the exit code."""
    try:
        check_python(version_info, sys.executable)
        args = parse_args(argv)
        venv = args.venv.absolute()
        if args.print_python:
            check_venv_target(venv)
            if not venv_python(venv).exists():
                raise SetupError("no environment at {}; run python vendor_setup.py first".format(venv))
            print(venv_python(venv))
            return 0
        # Found (or refused) before the venv is made, so a bad --blender changes nothing.
        look = not args.no_blender and bool(args.blender or not (args.dev or args.build_addon))
        blender = locate_blender(args.blender) if look else None
        if not args.build_addon:
            setup(venv, args.dev, os.environ)
        if args.dev and not args.build_addon and os.environ.get("SDI_SKIP_CHROMIUM") != "1":
            root = hasattr(os, "geteuid") and os.geteuid() == 0
            ensure_chromium(CHROMIUM.is_file(), shutil.which("apt-get"), root)
        zip_path = build_addon(args.dist.absolute())
        if blender:
            python = venv_python(venv)
            install_into_blender(blender, zip_path, python if python.exists() else None)
        elif look:
            step(
                "Blender not found (pass --blender PATH or set $BLENDER to install the add-on); "
                "without it, sdi-blender export writes RUN_DIR/export/mesh.glb to import by hand"
            )
    except (SetupError, OSError) as exc:  # OSError: e.g. no permission to write the venv
        print("error: {}".format(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
