"""The package as pyproject.toml declares it: every subpackage listed, every data file shipped,
and nothing importable as a top-level `proxy` or `strategies` (PyPI's `proxy.py` owns `proxy`).

The wheel itself is built and installed next to `proxy.py` by `.ci/wheel_smoke.sh`; these tests
catch the same mistakes in a second, before anything is built.
"""

from __future__ import annotations

import glob
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
OURS = ("proxy", "strategies")  # folder names; they install as itsproxy.<name>


def folder_of(package: str) -> Path:
    """The source folder of a dotted package name, through `package-dir`."""
    for prefix, folder in sorted(SETUPTOOLS["package-dir"].items(), key=lambda kv: -len(kv[0])):
        if package == prefix or package.startswith(prefix + "."):
            rest = package[len(prefix):].lstrip(".")
            return ROOT / folder / Path(*rest.split(".")) if rest else ROOT / folder
    raise AssertionError(f"{package} is not under any package-dir mapping")


def package_folders() -> dict[str, Path]:
    """Every folder with an __init__.py under proxy/ and strategies/, by its installed name."""
    found = {}
    for top in OURS:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT)
            found["itsproxy." + ".".join(rel.parts)] = init.parent
    return found


def data_files() -> list[Path]:
    """Every non-Python file the packages ship (caches excluded)."""
    return sorted(p for top in OURS for p in (ROOT / top).rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)


def test_package_dir_maps_only_our_folders():
    assert SETUPTOOLS["package-dir"] == {f"itsproxy.{name}": name for name in OURS}


def test_packages_list_is_every_folder_with_an_init():
    listed = SETUPTOOLS["packages"]
    assert len(listed) == len(set(listed)), "a package is listed twice"
    assert sorted(listed) == sorted(package_folders()), "pyproject's `packages` differs from the tree"
    for name in listed:
        assert folder_of(name) == package_folders()[name]


def test_package_data_covers_every_data_file():
    shipped: set[Path] = set()
    for package, patterns in SETUPTOOLS["package-data"].items():
        base = folder_of(package)
        for pattern in patterns:
            shipped.update((base / hit).resolve() for hit in glob.glob(pattern, root_dir=base, recursive=True)
                           if (base / hit).is_file())
    files = data_files()
    assert ROOT / "proxy" / "default_config.yaml" in files
    assert ROOT / "proxy" / "telemetry" / "static" / "dashboard.js" in files
    missing = [str(p.relative_to(ROOT)) for p in files if p.resolve() not in shipped]
    assert not missing, f"data files no package-data pattern ships: {missing}"


def test_entry_point_names_an_installed_module():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["itsproxy"].partition(":")
    assert module.rsplit(".", 1)[0] in SETUPTOOLS["packages"]
    assert (folder_of(module.rsplit(".", 1)[0]) / (module.rsplit(".", 1)[1] + ".py")).is_file()
    assert func


IMPORT_ALL = """
import importlib, pkgutil, sys
import itsproxy.proxy, itsproxy.strategies
names = [m.name for pkg in (itsproxy.proxy, itsproxy.strategies)
         for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
         if not m.name.endswith(".__main__")]  # __main__ runs the CLI
for name in names:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("proxy", "strategies"))
print(len(names), bad)
"""


def test_importing_every_module_never_loads_a_top_level_proxy(tmp_path):
    # From an empty directory: the repo root is not on sys.path, so a stray `import proxy`
    # (or `from proxy...`) fails here instead of silently finding the source folder.
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    count, bad = out.stdout.split(" ", 1)
    assert int(count) >= 40 and bad.strip() == "[]", out.stdout
