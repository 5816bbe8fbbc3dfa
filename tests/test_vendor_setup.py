"""vendor_setup.py: torch choice, version check, stamp, and its command-line behaviour."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from setup_script import REPO, SCRIPT, vs
from setup_script import run_setup as _run

LINUX_311 = {"version": "3.11.7", "tag": "cp311", "platform": "linux", "machine": "x86_64"}
CPU_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def _assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# --- torch choice ---------------------------------------------------------


def test_cpu_wheel_in_find_links_is_pinned(tmp_path: Path) -> None:
    (tmp_path / CPU_WHEEL).write_bytes(b"")
    (tmp_path / "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    choice = vs.choose_torch({}, LINUX_311, False, [tmp_path])
    assert choice.spec == "torch==2.13.0+cpu"
    assert choice.pip_args == []


def test_cpu_wheel_for_other_python_or_platform_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-win_amd64.whl").write_bytes(b"")
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl").write_bytes(b"")
    assert vs.choose_torch({}, LINUX_311, False, [tmp_path]).spec == "torch"
    windows = dict(LINUX_311, platform="win32", machine="AMD64")
    assert vs.choose_torch({}, windows, False, [tmp_path]).spec == "torch==2.13.0+cpu"


def test_highest_cpu_wheel_wins(tmp_path: Path) -> None:
    for version in ("2.9.1", "2.13.0", "2.10.0"):
        (tmp_path / CPU_WHEEL.replace("2.13.0", version)).write_bytes(b"")
    assert vs.choose_torch({}, LINUX_311, False, [tmp_path]).spec == "torch==2.13.0+cpu"


def test_nvidia_on_linux_takes_pypi_torch(tmp_path: Path) -> None:
    (tmp_path / CPU_WHEEL).write_bytes(b"")
    choice = vs.choose_torch({}, LINUX_311, True, [tmp_path])
    assert (choice.spec, choice.pip_args) == ("torch", [])
    assert "NVIDIA" in choice.reason


def test_nvidia_on_windows_takes_cuda_index() -> None:
    windows = dict(LINUX_311, platform="win32", machine="AMD64")
    choice = vs.choose_torch({}, windows, True, [])
    assert choice.spec == "torch"
    assert choice.pip_args == ["--index-url", "https://download.pytorch.org/whl/cu126"]


def test_no_gpu_no_wheel_takes_plain_torch(tmp_path: Path) -> None:
    assert vs.choose_torch({}, LINUX_311, False, [tmp_path, tmp_path / "missing"]).spec == "torch"


def test_env_override_wins(tmp_path: Path) -> None:
    (tmp_path / CPU_WHEEL).write_bytes(b"")
    env = {"SDI_TORCH_SPEC": "torch==2.5.1"}
    for nvidia in (False, True):
        choice = vs.choose_torch(env, LINUX_311, nvidia, [tmp_path])
        assert (choice.spec, choice.pip_args) == ("torch==2.5.1", [])
        assert "SDI_TORCH_SPEC" in choice.reason


def test_find_links_from_pip_config_and_env(tmp_path: Path) -> None:
    config = "\n".join(
        [
            "global.cert='/etc/ssl/certs/ca.crt'",
            "global.find-links='/opt/wheels'",
            "install.find-links='file:///srv/a%20b\\n/srv/c'",
            ":env:.find-links='/opt/wheels'",
            "global.extra-index-url='https://example.org/simple'",
        ]
    )
    entries = vs.parse_find_links(config, {"PIP_FIND_LINKS": "/env/one https://host/wheels"})
    assert entries == ["/opt/wheels", "file:///srv/a%20b", "/srv/c", "/env/one", "https://host/wheels"]
    assert vs.local_paths(entries) == [Path("/opt/wheels"), Path("/srv/a b"), Path("/srv/c"), Path("/env/one")]


def test_venv_python_path() -> None:
    assert vs.venv_python(Path("v"), windows=True) == Path("v", "Scripts", "python.exe")
    assert vs.venv_python(Path("v"), windows=False) == Path("v", "bin", "python")


# --- Chromium for the report screenshot test (--dev) --------------------------


class FakeApt:
    """apt-get as ensure_chromium runs it: the commands it got, answered from a script."""

    def __init__(self, *answers: tuple) -> None:
        self.answers, self.calls = list(answers), []

    def __call__(self, args) -> tuple:
        self.calls.append(" ".join(args[1:]))
        return self.answers.pop(0)


def test_chromium_present_runs_nothing() -> None:
    apt = FakeApt()
    assert vs.ensure_chromium(True, "/usr/bin/apt-get", True, apt) and apt.calls == []


@pytest.mark.parametrize("apt_get, root, needle", [(None, True, "no apt-get"), ("/usr/bin/apt-get", False, "sudo")])
def test_chromium_missing_without_apt_or_root_is_a_warning(apt_get, root, needle, capsys) -> None:
    apt = FakeApt()
    assert not vs.ensure_chromium(False, apt_get, root, apt) and apt.calls == []
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: ") and needle in line and "test will skip" in line


def test_chromium_is_installed_as_root_with_apt() -> None:
    apt = FakeApt((0, "Setting up chromium ..."))
    assert vs.ensure_chromium(False, "/usr/bin/apt-get", True, apt)
    assert apt.calls == ["install -y -q chromium"]


def test_missing_package_lists_are_updated_first(capsys) -> None:
    apt = FakeApt((100, "E: Unable to locate package chromium"), (0, ""), (0, "Setting up chromium ..."))
    assert vs.ensure_chromium(False, "/usr/bin/apt-get", True, apt)
    assert apt.calls == ["install -y -q chromium", "update -q", "install -y -q chromium"]
    assert capsys.readouterr().err == ""


def test_a_failed_install_is_a_warning_not_a_failure(capsys) -> None:
    apt = FakeApt((100, "E: Could not get lock /var/lib/dpkg/lock-frontend"))
    assert not vs.ensure_chromium(False, "/usr/bin/apt-get", True, apt)
    assert apt.calls == ["install -y -q chromium"]  # the lists were not the problem: no update
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: ") and "Could not get lock" in line


def test_apt_runs_non_interactively(tmp_path: Path) -> None:
    fake = tmp_path / "apt-get"
    fake.write_text('#!/bin/sh\necho "$DEBIAN_FRONTEND $*"\nexit 3\n', encoding="utf-8")
    fake.chmod(0o755)
    assert vs.run_apt([str(fake), "install", "-y", "chromium"]) == (3, "noninteractive install -y chromium\n")


# --- Python version check -------------------------------------------------


def test_too_old_python_is_one_line_and_exit_1(capsys: pytest.CaptureFixture) -> None:
    assert vs.main(["--venv", "unused"], version_info=(3, 10, 4)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "3.10.4" in lines[0] and "3.11" in lines[0]


def test_script_parses_as_python_3_6() -> None:
    # Old interpreters must reach the version check instead of a SyntaxError.
    ast.parse(SCRIPT.read_text(encoding="utf-8"), feature_version=(3, 6))


def _old_pythons() -> list:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for python in sorted(root.glob("3.*/bin/python")):
        parts = python.parent.parent.name.split(".")
        if parts[1].isdigit() and 6 <= int(parts[1]) < 11:
            found.append(python)
    return found


def test_old_interpreters_get_one_error_line(tmp_path: Path) -> None:
    pythons = _old_pythons()
    if not pythons:
        pytest.skip("no Python 3.6-3.10 installed under pyenv")
    for python in pythons:
        proc = subprocess.run(
            [str(python), str(SCRIPT), "--venv", str(tmp_path / "v")], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1, (python, proc.stderr)
        assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
        assert proc.stderr.startswith("error: ") and "3.11" in proc.stderr
        assert not (tmp_path / "v").exists()


# --- stamp ----------------------------------------------------------------


def test_stamp_roundtrip_and_changes(tmp_path: Path) -> None:
    choice = vs.TorchChoice("torch==2.13.0+cpu", [], "test")
    data = vs.stamp_data(True, choice, LINUX_311)
    assert not vs.stamp_matches(tmp_path, data)
    vs.write_stamp(tmp_path, data)
    assert vs.stamp_matches(tmp_path, data)
    assert [p.name for p in tmp_path.iterdir()] == [vs.STAMP_NAME]
    changed = [
        vs.stamp_data(False, choice, LINUX_311),
        vs.stamp_data(True, vs.TorchChoice("torch", [], "test"), LINUX_311),
        vs.stamp_data(True, choice, dict(LINUX_311, version="3.11.9")),
        dict(data, pyproject_sha256="0" * 64),
    ]
    for other in changed:
        assert not vs.stamp_matches(tmp_path, other)
    (tmp_path / vs.STAMP_NAME).write_text("{not json", encoding="utf-8")
    assert not vs.stamp_matches(tmp_path, data)


# --- command line ---------------------------------------------------------


def _snapshot(prefix: Path) -> dict:
    """Names and mtimes of the venv's top-level entries, its site-packages, and the stamp."""
    purelib = Path(sysconfig.get_paths(vars={"base": str(prefix), "platbase": str(prefix)})["purelib"])
    snap = {}
    for folder in (prefix, purelib, prefix / ("Scripts" if os.name == "nt" else "bin")):
        for entry in folder.iterdir():
            snap[str(entry)] = entry.stat().st_mtime_ns
    return snap


@pytest.mark.e2e
def test_second_run_changes_nothing() -> None:
    prefix = Path(sys.prefix)
    stamp_file = prefix / vs.STAMP_NAME
    if sys.prefix == sys.base_prefix or not stamp_file.is_file():
        pytest.skip("tests do not run in a venv made by vendor_setup.py (no " + vs.STAMP_NAME + " in sys.prefix)")
    stamp = json.loads(stamp_file.read_text(encoding="utf-8"))
    before = _snapshot(prefix)
    # --no-blender: a Blender on this machine would get the add-on reinstalled (outside the venv).
    # Up to date means no pip work: checked by its output, not by the time it took (see bench/).
    args = ["--venv", str(prefix), "--no-blender"] + (["--dev"] if stamp.get("dev") else [])
    proc = _run(args, env=dict(os.environ, SDI_SKIP_CHROMIUM="1"), timeout=300)  # no apt-get from a test
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout
    assert "pip install" not in proc.stdout
    assert _snapshot(prefix) == before


def test_venv_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "not-a-venv"
    target.write_text("x", encoding="utf-8")
    proc = _run(["--venv", str(target)])
    _assert_one_error_line(proc, str(target))
    assert proc.stderr.strip().count("\n") == 0
    assert target.read_text(encoding="utf-8") == "x"


def test_venv_is_a_non_venv_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    proc = _run(["--venv", str(tmp_path)])
    _assert_one_error_line(proc, "not a virtual environment")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bad_blender_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    # -I -S: no site-packages, as before set-up, so sdi_blender.blender_app comes from the checkout.
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            str(SCRIPT),
            "--venv",
            str(tmp_path / "venv"),
            "--dist",
            str(tmp_path / "dist"),
            "--blender",
            str(tmp_path / "no-blender"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    _assert_one_error_line(proc, "--blender", str(tmp_path / "no-blender"), "not an executable")
    assert proc.returncode == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where nothing can be created")
def test_venv_cannot_be_created() -> None:
    proc = _run(["--venv", "/proc/sdi-blender-venv"])
    _assert_one_error_line(proc, "could not create the venv", "/proc/sdi-blender-venv")


def test_bad_usage_exits_2() -> None:
    proc = _run(["--no-such-flag"])
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: ")


def test_print_python(tmp_path: Path) -> None:
    proc = _run(["--print-python", "--venv", str(tmp_path / "absent")])
    _assert_one_error_line(proc, "no environment")
    if (Path(sys.prefix) / vs.STAMP_NAME).is_file():
        proc = _run(["--print-python", "--venv", sys.prefix])
        assert proc.returncode == 0
        assert Path(proc.stdout.strip()).samefile(sys.executable)


def test_install_failure_names_the_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "SDI_"))}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS="", PIP_CONFIG_FILE=os.devnull)
    proc = _run(["--venv", str(tmp_path / "venv")], env=env, timeout=180)
    assert proc.returncode == 1
    _assert_one_error_line(proc, "installing torch", "torch")
    assert "creating venv" in proc.stdout
    assert not (tmp_path / "venv" / vs.STAMP_NAME).exists()


# --- the Blender add-on zip -------------------------------------------------


def test_build_addon_writes_an_installable_zip(tmp_path: Path) -> None:
    import zipfile

    proc = _run(["--build-addon", "--dist", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    import tomllib

    version = tomllib.loads((REPO / "blender_manifest.toml").read_text())["version"]
    target = tmp_path / f"sdi_blender-{version}.zip"
    names = zipfile.ZipFile(target).namelist()
    # Blender wants the manifest beside __init__.py at the archive's root.
    assert {"blender_manifest.toml", "__init__.py", "addon/preferences.py", "client.py", "protocol.py"} <= set(names)
    assert not [n for n in names if n.startswith("server/") or "__pycache__" in n or n.endswith(".pyc")]
    stamp = target.stat().st_mtime_ns
    again = _run(["--build-addon", "--dist", str(tmp_path)])
    assert again.returncode == 0 and "up to date" in again.stdout
    assert target.stat().st_mtime_ns == stamp  # a rebuild changes nothing


def test_blender_validates_the_addon_zip(tmp_path: Path) -> None:

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("bpy is not installed, so Blender's extension validator is not available")
    root = Path(list(spec.submodule_search_locations)[0])
    cli = sorted(root.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))[-1]
    tags = cli.parents[3] / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    assert _run(["--build-addon", "--dist", str(tmp_path)]).returncode == 0
    (zip_path,) = tmp_path.glob("sdi_blender-*.zip")
    proc = subprocess.run(
        [sys.executable, str(cli), "validate", "--valid-tags", str(tags), str(zip_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
