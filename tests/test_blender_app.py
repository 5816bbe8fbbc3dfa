"""Blender integration: finding Blender, installing the add-on, ``export --open``.

No real Blender here, so a fake ``blender`` program stands in: a script that handles
Blender's arguments in order with the real bpy module (the extension CLI for
``--command``, ``exec`` for ``--background --python-expr``) and logs its argv. Its
user configuration is private to each test (BLENDER_USER_RESOURCES).
"""

from __future__ import annotations

import importlib.util
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from setup_script import run_setup, vs

from sdi_blender import blender_app
from sdi_blender.blender_app import BlenderError, find_blender, import_expression, open_in_blender
from sdi_blender.cli import main

FAKE_BLENDER = '''#!{python}
"""A stand-in for Blender, backed by the bpy module; appends its argv to $FAKE_BLENDER_LOG."""
import json, os, sys, traceback

args = sys.argv[1:]
with open(os.environ["FAKE_BLENDER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")


def start():
    import bpy
    bpy.ops.wm.read_userpref()  # Blender loads the user's preferences unless --factory-startup
    return bpy


background, exit_code, i = False, 0, 0
while i < len(args):
    if args[i] in ("-c", "--command"):
        start()
        assert args[i + 1] == "extension", args
        from bl_pkg.bl_extension_cli import cli_extension_handler
        sys.exit(cli_extension_handler(args[i + 2:]))
    elif args[i] in ("-b", "--background"):
        background = True
    elif args[i] == "--python-exit-code":
        exit_code, i = int(args[i + 1]), i + 1
    elif args[i] == "--python-expr":
        i += 1
        if background:  # a window is out of reach: the window case is only logged
            start()
            try:
                exec(args[i], {{"__name__": "__main__"}})
            except Exception:
                traceback.print_exc()
                sys.exit(exit_code)
    else:
        sys.exit("fake blender: unexpected argument " + args[i])
    i += 1
'''

# Prints what a fresh Blender sees of the add-on, for checking what set-up stored.
SHOW_ADDON = (
    f"import bpy, json; a = bpy.context.preferences.addons.get({blender_app.ADDON_MODULE!r}); "
    "print('ADDON ' + json.dumps(a and a.preferences.server_python))"
)


class FakeBlender:
    """The fake ``blender`` in ``root/bin``, its argv log and its private user configuration."""

    def __init__(self, root: Path) -> None:
        self.path = root / "bin" / "blender"
        self.log = root / "blender-argv.jsonl"
        self.resources = root / "blender-user"

    def calls(self) -> list[list[str]]:
        text = self.log.read_text(encoding="utf-8") if self.log.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def addon_server_python(self) -> str | None:
        """The add-on's server_python as a newly started Blender sees it; None: not enabled."""
        proc = subprocess.run(
            [str(self.path), "--background", "--python-expr", SHOW_ADDON], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (line,) = [line for line in proc.stdout.splitlines() if line.startswith("ADDON ")]
        return json.loads(line[len("ADDON ") :])


@pytest.fixture
def fake_blender(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBlender:
    """A fake Blender; the environment (inherited by subprocesses) points it at its log and config."""
    spec = importlib.util.find_spec("bpy")
    if spec is None:
        pytest.skip("bpy is not installed (python vendor_setup.py --dev installs it)")
    fake = FakeBlender(tmp_path)
    fake.path.parent.mkdir()
    fake.path.write_text(FAKE_BLENDER.format(python=sys.executable), encoding="utf-8")
    fake.path.chmod(fake.path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_BLENDER_LOG", str(fake.log))
    monkeypatch.setenv("BLENDER_USER_RESOURCES", str(fake.resources))
    return fake


@pytest.fixture
def no_blender(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any Blender of this machine: empty PATH, no $BLENDER, no standard places."""
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("BLENDER", raising=False)
    monkeypatch.setattr(blender_app, "standard_places", lambda: [])


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n", encoding="utf-8")
    path.chmod(0o755)
    return path


# --- finding Blender --------------------------------------------------------


def test_imports_without_torch_or_bpy() -> None:
    # vendor_setup.py imports it before anything is installed, and it ships in the add-on.
    code = (
        "import sys, sdi_blender.blender_app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'bpy')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_find_blender_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_blender: None) -> None:
    explicit, env, on_path = (_executable(tmp_path / d / "blender") for d in ("explicit", "env", "path"))
    standard = _executable(tmp_path / "standard" / "Blender")
    assert find_blender() is None
    monkeypatch.setattr(blender_app, "standard_places", lambda: [tmp_path / "missing", standard])
    assert find_blender() == str(standard)
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_blender() == str(on_path)
    monkeypatch.setenv("BLENDER", str(env))
    assert find_blender() == str(env)
    assert find_blender(str(explicit)) == str(explicit)


def test_find_blender_refuses_a_named_non_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_blender: None
) -> None:
    text_file = tmp_path / "blender.txt"
    text_file.write_text("not a program", encoding="utf-8")
    for bad in (tmp_path / "missing", tmp_path, text_file):
        with pytest.raises(BlenderError) as info:
            find_blender(str(bad))
        assert f"--blender {bad} is not an executable file" in info.value.one_line()
        assert "\n" not in info.value.one_line()
    monkeypatch.setenv("BLENDER", str(tmp_path / "missing"))
    with pytest.raises(BlenderError, match=r"\$BLENDER="):
        find_blender()


# --- installing the add-on ---------------------------------------------------


@pytest.mark.e2e
def test_setup_installs_the_addon_and_stores_the_server_python(
    fake_blender: FakeBlender, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    zip_path = vs.build_addon(tmp_path / "dist")
    python = tmp_path / "venv" / "bin" / "python"
    vs.install_into_blender(str(fake_blender.path), zip_path, python)
    assert (
        f"installed and enabled in Blender {fake_blender.path}; its server python is {python}"
        in capsys.readouterr().out
    )
    install, prefs = fake_blender.calls()
    assert install == ["--command", "extension", "install-file", "--repo", "user_default", "--enable", str(zip_path)]
    assert "--factory-startup" not in prefs  # that would ignore (and not save) the user's preferences
    assert (fake_blender.resources / "extensions" / "user_default" / "sdi_blender" / "blender_manifest.toml").is_file()
    # A Blender started afterwards has the add-on enabled and the path saved.
    assert fake_blender.addon_server_python() == str(python)


@pytest.mark.e2e
def test_failed_install_is_one_error_line(fake_blender: FakeBlender, tmp_path: Path) -> None:
    not_a_zip = tmp_path / "sdi_blender-0.1.0.zip"
    not_a_zip.write_text("junk", encoding="utf-8")
    # Blender's install-file exits 0 here; its ERROR line must still count as failure.
    with pytest.raises(vs.SetupError) as info:
        vs.install_into_blender(str(fake_blender.path), not_a_zip, tmp_path / "python")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"installing the add-on failed in Blender {fake_blender.path}: ERROR")
    assert "zip" in message
    assert fake_blender.addon_server_python() is None


@pytest.mark.e2e
def test_vendor_setup_command_installs_into_the_given_blender(fake_blender: FakeBlender, tmp_path: Path) -> None:
    # --build-addon skips the venv work; --venv names an existing one for the server python.
    args = [
        "--build-addon",
        "--dist",
        str(tmp_path / "dist"),
        "--venv",
        sys.prefix,
        "--blender",
        str(fake_blender.path),
    ]
    for _ in range(2):  # the second run reinstalls over the first copy
        proc = run_setup(args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    python = vs.venv_python(Path(sys.prefix).absolute())
    assert proc.stdout.count(f"installed and enabled in Blender {fake_blender.path}") == 1
    assert fake_blender.addon_server_python() == str(python)
    assert len(fake_blender.calls()) == 5


def test_plain_setup_without_blender_says_so(
    tmp_path: Path, no_blender: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    made = []
    monkeypatch.setattr(vs, "setup", lambda venv, dev, env: made.append(venv))  # no venv work
    assert vs.main(["--venv", str(tmp_path / "venv"), "--dist", str(tmp_path / "dist")]) == 0
    out = capsys.readouterr().out
    assert made and "Blender not found" in out and "mesh.glb" in out
    # A named Blender that is not there stops the set-up before the venv is touched.
    made.clear()
    assert vs.main(["--venv", str(tmp_path / "venv"), "--blender", str(tmp_path / "nope")]) == 1
    assert not made
    assert capsys.readouterr().err.startswith(f"error: --blender {tmp_path / 'nope'} is not an executable file")


# --- opening a run in Blender --------------------------------------------------


def _wait_for_calls(fake: FakeBlender, count: int) -> list[list[str]]:
    deadline = time.monotonic() + 30
    while len(fake.calls()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return fake.calls()


@pytest.mark.e2e
def test_open_in_blender_imports_the_run(
    fake_blender: FakeBlender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    proc = open_in_blender(str(fake_blender.path), Path("runs/apple"))
    assert proc.wait(timeout=30) == 0
    ((flag, code),) = fake_blender.calls()
    assert flag == "--python-expr"  # a window: no --background
    assert "bpy.ops.sdi.import_run(run_dir=" in code
    assert repr(str(tmp_path.resolve() / "runs" / "apple")) in code


@pytest.mark.e2e
def test_import_expression_imports_the_glb_with_or_without_the_addon(
    run: Path, fake_blender: FakeBlender, tmp_path: Path
) -> None:
    from sdi_blender.server.export.pipeline import ExportSettings, export_run

    faces = export_run(run, ExportSettings(resolution=32, texture_size=64), device="cpu").info["faces"]
    # One new mesh holding the export's triangles, through the add-on's operator once it is there.
    for installed in (False, True):
        if installed:
            blender_app.install_extension(str(fake_blender.path), vs.build_addon(tmp_path / "dist"), None)
        code = (
            f"import bpy; before = set(bpy.data.meshes); assert ('import_run' in dir(bpy.ops.sdi)) == {installed}\n"
            f"{import_expression(run)}\n"
            f"assert [len(m.polygons) for m in set(bpy.data.meshes) - before] == [{faces}]"
        )
        proc = subprocess.run(
            [str(fake_blender.path), "--background", "--python-exit-code", "1", "--python-expr", code],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


EXPORT_FAST = ["--resolution", "32", "--texture-size", "64", "--device", "cpu"]


def test_export_open_without_blender_keeps_the_glb(
    run: Path,
    no_blender: None,
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["export", str(run), *EXPORT_FAST, "--open"]) == 0
    mesh = run / "export" / "mesh.glb"
    assert mesh.is_file()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"no Blender found (set $BLENDER or pass --blender); the mesh is at {mesh}"


@pytest.mark.e2e
def test_export_open_starts_blender_on_the_run(
    run: Path,
    fake_blender: FakeBlender,
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["export", str(run), *EXPORT_FAST, "--blender", str(fake_blender.path)]) == 0
    assert f"opening it in Blender {fake_blender.path}" in capsys.readouterr().err
    ((flag, code),) = _wait_for_calls(fake_blender, 1)
    assert flag == "--python-expr" and "bpy.ops.sdi.import_run" in code and repr(str(run.resolve())) in code


def test_export_open_refuses_before_exporting(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    before = {str(p): p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["export", str(run), *EXPORT_FAST, "--blender", str(tmp_path / "nope")]) == 2
    assert main(["export", str(run), *EXPORT_FAST, "--open", "--format", "obj"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("sdi-blender: error: ") for line in errors)
    assert f"--blender {tmp_path / 'nope'} is not an executable file" in errors[0]
    assert {str(p): p.stat().st_mtime_ns for p in run.rglob("*")} == before
