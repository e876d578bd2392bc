"""Packaging pieces that can be tested in seconds, without PyInstaller or makeself: the build
requirements per flavour, the pinned constraints, build.spec, and the Linux installer and
uninstaller scripts run on a fake one-folder app in a temporary HOME.

The real end-to-end check (build, installer, install, --self-test, upgrade, uninstall) is
packaging/test_package.sh, a separate CI step."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))

import build_requirements  # noqa: E402

VERSION = "9.8.7"
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("bash") is None,
    reason="the Linux installer scripts need Linux and bash",
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- build requirements, constraints, spec --------------------------------------------------------
def test_flavours_swap_only_the_onnxruntime_package():
    gpu = build_requirements.requirements("gpu")
    cpu = build_requirements.requirements("cpu")
    assert any(r.startswith("onnxruntime-gpu") for r in gpu)
    assert not any(r.startswith("onnxruntime-gpu") for r in cpu)
    assert any(re.match(r"onnxruntime[<>=!~ ]", r) for r in cpu)
    others = [r for r in gpu if not r.startswith("onnxruntime")]
    assert others == [r for r in cpu if not r.startswith("onnxruntime")]
    assert any(r.lower().startswith("pyinstaller") for r in gpu)
    with pytest.raises(ValueError):
        build_requirements.requirements("rocm")


def test_pyinstaller_is_a_dist_extra_not_a_test_or_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(d.lower().startswith("pyinstaller") for d in extras["dist"])
    for deps in (project["dependencies"], extras["test"], extras["train"]):
        assert not any(d.lower().startswith("pyinstaller") for d in deps)


def test_constraints_pin_every_runtime_dependency_and_one_onnxruntime_release():
    pins = {}
    for line in (ROOT / "packaging" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[_canonical(name)] = version
    for req in build_requirements.requirements("gpu") + build_requirements.requirements("cpu"):
        assert build_requirements._name(req) in pins, f"{req} is not pinned"
    assert pins["onnxruntime"] == pins["onnxruntime-gpu"]


def test_build_spec_keeps_the_trainer_stack_out():
    source = (ROOT / "build.spec").read_text(encoding="utf-8")
    compile(source, "build.spec", "exec")
    excludes = source[source.index("excludes = [") : source.index("# fmt: on")]
    for name in ("trainer", "tensorflow", "keras", "tf2onnx", "optuna", "matplotlib", "pytest"):
        assert f'"{name}"' in excludes
    assert '"QtNetwork"' in excludes and '"QtQml"' in excludes
    assert "default.onnx" in source  # the build stops without the default model


# -- the Linux installer on a fake app --------------------------------------------------------------
def make_stage(folder: Path, *, starts: bool = True, version: str = VERSION) -> Path:
    """What the makeself archive holds: LesionLens/ (here a shell script), the scripts, VERSION."""
    app = folder / "LesionLens"
    icons = app / "_internal" / "resources" / "icons"
    icons.mkdir(parents=True)
    for icon in (ROOT / "resources" / "icons").iterdir():
        shutil.copy(icon, icons)
    exe = app / "LesionLens"
    if starts:
        exe.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = --version ]; then echo "LesionLens {version}"; exit 0; fi\n'
            'echo "fake app: $*"\n'
        )
    else:
        exe.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    exe.chmod(0o755)
    for script in ("install.sh", "uninstall.sh"):
        shutil.copy(ROOT / "packaging" / "linux" / script, folder / script)
        (folder / script).chmod(0o755)
    (folder / "VERSION").write_text(version + "\n")
    (folder / "FLAVOUR").write_text("cpu\n")
    return folder


def run_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), PATH=os.environ.get("PATH", "/usr/bin:/bin"), **extra)
    return env


def install(stage: Path, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(stage / "install.sh")],
        env=run_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def everything(home: Path) -> set[str]:
    return {p.relative_to(home).as_posix() for p in home.rglob("*")}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    return make_stage(tmp_path / "stage")


@linux_only
def test_install_layout_launcher_and_desktop_entry(stage: Path, home: Path):
    result = install(stage, home)
    assert result.returncode == 0, result.stderr
    data = home / ".local" / "share"
    root = data / "lesionlens"
    assert (root / "current").is_symlink()
    current = root / os.readlink(root / "current")
    assert current.name.startswith(f"app-{VERSION}-cpu-")
    assert (current / "LesionLens").is_file()
    launcher = home / ".local" / "bin" / "lesionlens"
    out = subprocess.run([launcher, "a b", "c"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "fake app: a b c"
    entry = (data / "applications" / "lesionlens.desktop").read_text()
    assert f'Exec="{launcher}" %f' in entry and "Icon=lesionlens" in entry
    for size in (16, 32, 48, 256):
        assert (data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "lesionlens.png").is_file()
    assert (data / "icons" / "hicolor" / "scalable" / "apps" / "lesionlens.svg").is_file()
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(
            ["desktop-file-validate", data / "applications" / "lesionlens.desktop"],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr


@linux_only
def test_second_install_upgrades_into_a_fresh_folder(stage: Path, home: Path, tmp_path: Path):
    assert install(stage, home).returncode == 0
    root = home / ".local" / "share" / "lesionlens"
    first = os.readlink(root / "current")
    (root / first / "_internal" / "stale.txt").write_text("from the old version")
    # an older version that installed a file this one does not: removed by the upgrade
    old_extra = home / ".local" / "share" / "icons" / "hicolor" / "512x512" / "apps"
    old_extra.mkdir(parents=True)
    (old_extra / "lesionlens.png").write_bytes(b"old")
    with (root / "manifest").open("a") as manifest:
        manifest.write(f"file {old_extra / 'lesionlens.png'}\n")

    newer = make_stage(tmp_path / "stage2", version="9.9.0")
    result = install(newer, home)
    assert result.returncode == 0, result.stderr
    second = os.readlink(root / "current")
    assert second != first and second.startswith("app-9.9.0-")
    assert sorted(p.name for p in root.glob("app-*")) == [second]
    assert not list(root.rglob("stale.txt"))
    assert not (old_extra / "lesionlens.png").exists()
    assert not list(root.glob(".*partial"))


@linux_only
def test_a_new_version_that_does_not_start_changes_nothing(stage: Path, home: Path, tmp_path):
    assert install(stage, home).returncode == 0
    root = home / ".local" / "share" / "lesionlens"
    before = os.readlink(root / "current")
    files_before = everything(home)
    broken = make_stage(tmp_path / "broken", starts=False)
    result = install(broken, home)
    assert result.returncode != 0
    assert "does not start" in result.stderr and "nothing was changed" in result.stderr
    assert os.readlink(root / "current") == before
    assert everything(home) == files_before  # no half install, no temporary files
    launcher = home / ".local" / "bin" / "lesionlens"
    assert subprocess.run([launcher, "x"], capture_output=True, text=True).returncode == 0


@linux_only
def test_uninstall_leaves_only_user_data_and_what_was_there(stage: Path, home: Path):
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "other-tool").write_text("#!/bin/sh\n")
    assert install(stage, home).returncode == 0
    config = home / ".config" / "LesionLens"
    config.mkdir(parents=True)
    (config / "LesionLens.conf").write_text("[General]\n")
    (home / "reports").mkdir()
    (home / "reports" / "case.pdf").write_bytes(b"%PDF-1.4")

    result = subprocess.run(
        [home / ".local" / "bin" / "lesionlens", "--uninstall"],
        env=run_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "settings" in result.stdout
    assert everything(home) == {
        ".local",
        ".local/bin",
        ".local/bin/other-tool",
        ".config",
        ".config/LesionLens",
        ".config/LesionLens/LesionLens.conf",
        "reports",
        "reports/case.pdf",
    }


@linux_only
def test_uninstall_keeps_files_it_did_not_install(stage: Path, home: Path):
    assert install(stage, home).returncode == 0
    root = home / ".local" / "share" / "lesionlens"
    (root / "my-notes.txt").write_text("mine")
    result = subprocess.run(
        [home / ".local" / "bin" / "lesionlens-uninstall"],
        env=run_env(home),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "left in place" in result.stdout
    assert sorted(p.name for p in root.iterdir()) == ["my-notes.txt"]
    assert not (home / ".local" / "bin" / "lesionlens").exists()


@linux_only
def test_xdg_data_home_and_an_awkward_home_path(stage: Path, tmp_path: Path):
    home = tmp_path / "Dr O'Neil $HOME"
    home.mkdir()
    data = home / "xdg data"
    result = install(stage, home, XDG_DATA_HOME=str(data))
    assert result.returncode == 0, result.stderr
    assert (data / "lesionlens" / "current" / "LesionLens").is_file()
    assert not (home / ".local" / "share").exists()
    launcher = home / ".local" / "bin" / "lesionlens"
    out = subprocess.run([launcher, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"LesionLens {VERSION}"
    if shutil.which("desktop-file-validate"):
        entry = data / "applications" / "lesionlens.desktop"
        check = subprocess.run(["desktop-file-validate", entry], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    subprocess.run([launcher, "--uninstall"], env=run_env(home), check=True, capture_output=True)
    assert everything(home) == set()


@linux_only
def test_installer_help_and_unknown_options(stage: Path, home: Path):
    ok = subprocess.run(
        ["bash", stage / "install.sh", "--help"], env=run_env(home), capture_output=True, text=True
    )
    assert ok.returncode == 0 and "uninstall" in ok.stdout
    bad = subprocess.run(
        ["bash", stage / "install.sh", "--frobnicate"],
        env=run_env(home),
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "unknown option" in bad.stderr
    assert everything(home) == set()


@linux_only
def test_upgrade_keeps_the_folder_of_a_version_still_running(stage: Path, home: Path, tmp_path):
    assert install(stage, home).returncode == 0
    root = home / ".local" / "share" / "lesionlens"
    first = root / os.readlink(root / "current")
    sleeper = first / "_internal" / "sleep"  # a program running from the old version's folder
    shutil.copy(shutil.which("sleep"), sleeper)
    proc = subprocess.Popen([sleeper, "30"])
    try:
        result = install(make_stage(tmp_path / "stage2"), home)
        assert result.returncode == 0, result.stderr
        assert "still running" in result.stderr
        assert first.is_dir() and os.readlink(root / "current") != first.name
    finally:
        proc.kill()
        proc.wait()
    assert install(make_stage(tmp_path / "stage3"), home).returncode == 0
    assert not first.exists()
    assert len(list(root.glob("app-*"))) == 1
