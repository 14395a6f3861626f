"""Packaging: the README's two commands, CI running the second verbatim, the wheel's contents, entry points,
the Linux desktop entry and the icon files the bundle makes."""

from __future__ import annotations

import configparser
import importlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the suite's CI runs 3.11

ROOT = Path(__file__).resolve().parent.parent
INSTALL_COMMAND = "pip install torch==2.13.0 -e . && python main.py"
TEST_COMMAND = 'pip install torch==2.13.0 -e ".[test]" && python -m pytest'


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _first_code_block(markdown: str) -> list[str]:
    match = re.search(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)
    assert match, "README has no code block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_readme_starts_with_exactly_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# Inkpunk Studio\n")
    assert _first_code_block(readme) == [INSTALL_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line.strip() for line in ci.splitlines() if not line.strip().startswith("#")]
    assert TEST_COMMAND in commands, "CI must run the README's test command, verbatim, on a line of its own"
    assert "torch==2.13.0" in ci
    # CI never fetches weights: no hub downloads in the script.
    assert "hf_hub_download" not in ci and "huggingface-cli" not in ci


def test_entry_points_resolve() -> None:
    project = _pyproject()["project"]
    scripts = {**project["scripts"], **project["gui-scripts"]}
    assert set(scripts) == {"inkpunk", "inkpunk-studio"}
    assert "inkpunk-studio" in project["gui-scripts"], "the app must not open a console window on Windows"
    for target in scripts.values():
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr)), target


def test_dependencies_are_the_lean_ones() -> None:
    deps = " ".join(_pyproject()["project"]["dependencies"]).lower()
    assert "pyside6-essentials" in deps and "pyside6-addons" not in deps
    assert "torchvision" not in deps and "diffusers" not in deps  # diffusers is a test-only reference
    extras = _pyproject()["project"]["optional-dependencies"]
    assert any(d.startswith("diffusers") for d in extras["test"])
    assert any(d.startswith("pyinstaller") for d in extras["bundle"])


def _source_packages() -> set[str]:
    """Every folder of Python code under engine/ and inkpunk_studio/, as dotted package names."""
    names = set()
    for top in ("engine", "inkpunk_studio"):
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                names.add(".".join(init.parent.relative_to(ROOT).parts))
    return names


def test_every_code_package_is_listed_in_pyproject() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    missing = _source_packages() - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the project's wheel from a copy of the tree (in-tree builds leave build/ and egg-info behind)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns(".git", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache", "tests")
    for name in ("pyproject.toml", "README.md", "main.py"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("engine", "inkpunk_studio", "assets", "resources"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(out)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("inkpunk_studio-*.whl")
    return built


def test_wheel_contains_code_tokenizer_and_resources(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "engine/__init__.py",
        "inkpunk_studio/__init__.py",
        "inkpunk_studio/logsetup.py",
        "inkpunk_studio/selftest.py",
        "inkpunk_assets/tokenizer/vocab.json",
        "inkpunk_assets/tokenizer/merges.txt",
        "inkpunk_resources/icon.png",
        "inkpunk_resources/inkpunk-studio.desktop",
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    # Every module of the source tree made it in (a forgotten subpackage would vanish from installs).
    for package in _source_packages():
        for module in (ROOT / package.replace(".", "/")).glob("*.py"):
            arcname = f"{package.replace('.', '/')}/{module.name}"
            assert arcname in names, f"{arcname} missing from the wheel"
    # All resources ship (style sheet, presets, icon...), but not the README's screenshot.
    dev_only = {"screenshot.png"}
    for resource in (ROOT / "resources").rglob("*"):
        if resource.is_file() and "__pycache__" not in resource.parts:
            arcname = "inkpunk_resources/" + resource.relative_to(ROOT / "resources").as_posix()
            assert (arcname in names) != (resource.name in dev_only), f"{arcname}: wrongly shipped or missing"
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    ).decode()
    assert "inkpunk = inkpunk_studio.cli:main" in entry_points
    assert "[gui_scripts]" in entry_points and "inkpunk-studio = inkpunk_studio.__main__:main" in entry_points


def test_installed_wheel_finds_its_resources(wheel: Path, tmp_path: Path) -> None:
    """A regular (non-editable) install finds the icon and the engine its tokenizer, without the source tree."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "import sys, inkpunk_studio\n"
        "from pathlib import Path\n"
        "from inkpunk_studio import paths\n"
        "site = Path(sys.argv[1]).resolve()\n"
        "assert Path(inkpunk_studio.__file__).resolve().is_relative_to(site), inkpunk_studio.__file__\n"
        "icon = paths.resource_path('icon.png').resolve()\n"
        "assert icon.is_file() and icon.is_relative_to(site), icon\n"
        "from engine.assets import tokenizer_files\n"
        "vocab, merges = tokenizer_files()\n"
        "assert vocab.resolve().is_relative_to(site) and merges.is_file(), vocab\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        cwd=tmp_path,  # not the repo: the source tree must not be importable
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_desktop_entry() -> None:
    path = ROOT / "resources" / "inkpunk-studio.desktop"
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path, encoding="utf-8")
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Name"] == "Inkpunk Studio"
    assert entry["Exec"].split()[0] == "inkpunk-studio" == entry["TryExec"]
    assert entry["Exec"].split()[0] in _pyproject()["project"]["gui-scripts"]
    assert entry["Icon"] == "inkpunk-studio"
    assert entry["Terminal"] == "false"
    assert "Graphics" in entry["Categories"].split(";")
    validator = shutil.which("desktop-file-validate")
    if validator:  # extra strictness where desktop-file-utils is installed
        result = subprocess.run([validator, str(path)], capture_output=True, text=True, check=False)
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout


def test_icon_and_generated_icon_files(tmp_path: Path) -> None:
    from PIL import Image

    sys.path.insert(0, str(ROOT / "resources"))
    try:
        import make_icons
    finally:
        sys.path.remove(str(ROOT / "resources"))

    png = ROOT / "resources" / "icon.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.mode == "RGBA"
        assert img.size[0] == img.size[1] >= 512
        assert img.getpixel((0, 0))[3] == 0, "corners are transparent (rounded tile)"
        assert img.getpixel((img.size[0] // 2, img.size[1] // 2))[3] == 255

    ico = make_icons.write_ico(png, tmp_path / "app.ico")
    with Image.open(ico) as img:
        assert img.format == "ICO"
        assert {(16, 16), (32, 32), (48, 48), (256, 256)} <= set(img.info["sizes"])
    icns = make_icons.write_icns(png, tmp_path / "app.icns")
    assert icns.read_bytes()[:4] == b"icns"
    with Image.open(icns) as img:
        assert img.format == "ICNS"
