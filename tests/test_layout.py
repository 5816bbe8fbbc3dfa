"""The architecture as the README's Layout section states it: layers import one way only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "sdi_blender" / "server"

LAYERS: list[set[str]] = [
    {"util"},
    {"scene", "diffusion"},
    {"toyworld"},
    {"training"},
    {"export"},
    {"evaluation"},
    {"commands", "service"},
]
"""Bottom to top: a subpackage may import its own layer's siblings' nothing, only lower layers."""
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _imports(path: Path) -> set[str]:
    """Absolute names of the sdi_blender modules ``path`` imports (at any depth in the file)."""
    parts = ["sdi_blender", *path.relative_to(REPO / "sdi_blender").with_suffix("").parts]
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found |= {f"{module}.{a.name}" for a in node.names} | {module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("sdi_blender")}


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "server" and parts[2] in RANK else None


def test_every_server_module_lives_in_a_layer() -> None:
    loose = [p.name for p in SERVER.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside the subpackages: {loose}"
    assert {p.name for p in SERVER.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(RANK)


def test_no_subpackage_imports_upward_or_sideways() -> None:
    wrong = []
    for path in SERVER.rglob("*.py"):
        own = _subpackage("sdi_blender.server." + ".".join(path.relative_to(SERVER).parts))
        if own is None:
            continue
        for module in _imports(path):
            other = _subpackage(module)
            if other is not None and other != own and RANK[other] >= RANK[own]:
                wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert not wrong, "\n".join(sorted(wrong))


def test_only_the_service_speaks_the_wire_protocol() -> None:
    speakers = {
        str(p.relative_to(REPO))
        for p in SERVER.rglob("*.py")
        if any(m.startswith("sdi_blender.protocol") for m in _imports(p))
    }
    assert speakers and all(s.startswith("sdi_blender/server/service/") for s in speakers), speakers


def test_the_addon_side_never_imports_the_server() -> None:
    """What the Blender extension ships (everything outside server/ but the CLI) stays torch-free."""
    blender_side = [p for p in (REPO / "sdi_blender").rglob("*.py") if "server" not in p.relative_to(REPO).parts]
    for path in blender_side:
        if path.name in ("cli.py", "blender_app.py"):
            continue  # not shipped in the extension (vendor_setup.ADDON_SKIP)
        assert not [m for m in _imports(path) if m.startswith("sdi_blender.server")], path


def test_the_server_entry_point_does_not_load_the_cli() -> None:
    code = (
        "import runpy, sys; sys.argv = ['x', '--help']\n"
        "try:\n    runpy.run_module('sdi_blender.server', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('cli' if 'sdi_blender.cli' in sys.modules else 'no cli', 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "no cli False"
    assert "python -m sdi_blender.server" in proc.stdout


def test_the_extension_zip_ships_no_module_that_needs_the_server() -> None:
    sys.path.insert(0, str(REPO))
    try:
        import vendor_setup
    finally:
        sys.path.remove(str(REPO))
    names = [name for _, name in vendor_setup.addon_files()]
    assert "catalog.py" in names and "protocol.py" in names
    assert not [n for n in names if n.startswith("server/") or n in ("cli.py", "blender_app.py")], names
