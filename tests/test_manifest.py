"""The Blender extension manifest: the fields Blender and its extensions site require."""

import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "blender_manifest.toml"
# Blender's documented add-on tags (Extensions > Tags in the manual).
ADDON_TAGS = {
    "3D View",
    "Add Curve",
    "Add Mesh",
    "Animation",
    "Bake",
    "Camera",
    "Compositing",
    "Development",
    "Game Engine",
    "Geometry Nodes",
    "Grease Pencil",
    "Import-Export",
    "Lighting",
    "Material",
    "Mesh",
    "Modeling",
    "Node",
    "Object",
    "Paint",
    "Physics",
    "Pipeline",
    "Render",
    "Rigging",
    "Scene",
    "Sculpt",
    "Sequencer",
    "System",
    "Text Editor",
    "Tracking",
    "User Interface",
    "UV",
}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return tomllib.loads(MANIFEST.read_text(encoding="utf-8"))


def _terse_ok(text: str) -> bool:
    """Blender's rule for taglines and permission reasons: short, no trailing punctuation."""
    return 0 < len(text) <= 64 and text == text.strip() and (text[-1].isalnum() or text[-1] in ")]}")


def test_identity(manifest: dict) -> None:
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["id"] == "sdi_blender"
    assert manifest["name"] == "SDI Text-to-3D"
    assert manifest["type"] == "add-on"
    assert manifest["maintainer"].strip()
    assert _terse_ok(manifest["tagline"]), manifest["tagline"]


def test_version_matches_pyproject_and_package(manifest: dict) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    import sdi_blender

    assert manifest["version"] == pyproject["project"]["version"] == sdi_blender.__version__


def test_blender_version_and_license(manifest: dict) -> None:
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] and all(item.startswith("SPDX:") for item in manifest["license"])
    assert "SPDX:GPL-3.0-or-later" in manifest["license"]


def test_tags_are_blender_addon_tags(manifest: dict) -> None:
    assert manifest["tags"] and set(manifest["tags"]) <= ADDON_TAGS


def test_permissions_have_reasons(manifest: dict) -> None:
    permissions = manifest["permissions"]
    assert set(permissions) >= {"files", "network"}
    for key, reason in permissions.items():
        assert isinstance(reason, str) and _terse_ok(reason), (key, reason)


def _blender_ext_cli() -> Path:
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("bpy is not installed, so Blender's extension validator is not available")
    root = Path(list(spec.submodule_search_locations)[0])
    found = sorted(root.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        pytest.skip("bpy has no blender_ext.py")
    return found[-1]


def test_blender_validator_accepts_the_extension(tmp_path: Path) -> None:
    # An extension is the add-on package with the manifest beside its __init__.py.
    cli = _blender_ext_cli()
    tags = cli.parents[3] / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    ext = tmp_path / "sdi_blender"
    shutil.copytree(REPO / "sdi_blender", ext, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(MANIFEST, ext / MANIFEST.name)
    proc = subprocess.run(
        [sys.executable, str(cli), "validate", "--valid-tags", str(tags), str(ext)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
