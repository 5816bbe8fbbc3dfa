"""The add-on entry point: importable without bpy/torch, and register/unregister in Blender."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BLOCKED_IMPORT = textwrap.dedent(
    """
    import sys

    class Block:
        # Acts as if torch and bpy were not installed, whatever this venv holds.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "bpy"):
                raise ImportError("blocked for this test: " + name)
            return None

    sys.meta_path.insert(0, Block())
    import sdi_blender
    assert callable(sdi_blender.register) and callable(sdi_blender.unregister)
    # What the add-on uses to drive the server must be torch-free too.
    import sdi_blender.client, sdi_blender.protocol, sdi_blender.errors, sdi_blender.addon.controller  # noqa: E401
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "bpy"))
    print(sdi_blender.__file__, sdi_blender.__version__, loaded)
    """
)

# Runs in its own process: bpy is heavy and global, and must not leak into other tests.
IN_BLENDER = textwrap.dedent(
    """
    import json, sys
    try:
        import bpy
    except ImportError as exc:
        print(json.dumps({"skip": str(exc)}))
        sys.exit(0)
    import addon_utils
    import sdi_blender
    from sdi_blender.addon.preferences import SDIAddonPreferences as cls
    from blender_harness import draw_preferences

    seen = {}
    sdi_blender.register()
    seen["after_register"] = cls.is_registered
    prop = cls.bl_rna.properties["server_python"]
    seen["subtype"], seen["description"] = prop.subtype, prop.description
    sdi_blender.unregister()
    seen["after_unregister"] = cls.is_registered
    sdi_blender.register()
    seen["after_reregister"] = cls.is_registered
    sdi_blender.unregister()

    # As Blender enables it: the preferences must be found under the add-on's module name.
    addon_utils.enable("sdi_blender", default_set=True)
    prefs = bpy.context.preferences.addons["sdi_blender"].preferences
    prefs.server_python = "/some/python"
    seen["enabled_prefs"] = prefs.server_python
    seen["drawn"] = [name for kind, name in draw_preferences(prefs) if kind == "prop"]
    addon_utils.disable("sdi_blender", default_set=True)
    seen["after_disable"] = cls.is_registered
    print(json.dumps(seen))
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_imports_without_torch_or_bpy() -> None:
    proc = _run(BLOCKED_IMPORT)
    assert proc.returncode == 0, proc.stderr
    path, version, loaded = proc.stdout.split(" ", 2)
    assert Path(path).parent.samefile(REPO / "sdi_blender")
    assert version == "0.1.0"
    assert loaded.strip() == "[]"


@pytest.mark.e2e
def test_register_unregister_in_blender() -> None:
    proc = _run(IN_BLENDER)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in seen:
        pytest.skip("bpy cannot be imported: " + seen["skip"])
    assert seen["after_register"] is True
    assert seen["subtype"] == "FILE_PATH"
    assert seen["description"].startswith("Python of the server environment made by vendor_setup.py")
    assert seen["drawn"] == [
        "server_python",
        "model_choice",
        "stall_seconds",
        "jobs_dir",
        "device",
        "use_remote",
        "remote_host",
        "remote_port",
        "remote_token",
    ]
    assert seen["after_unregister"] is False
    assert seen["after_reregister"] is True
    assert seen["enabled_prefs"] == "/some/python"
    assert seen["after_disable"] is False
