"""What an installed medrecon needs besides the checkout: every package in pyproject's list, the configs installed
with the wheel, one-line errors where an optional part (pynetdicom, pip) is missing."""
import importlib.util
import tomllib
from pathlib import Path

import pytest

from pipelines import datasets
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_and_installs_the_configs():
    """A wheel held no configs (`--config sparse_view_ct_8` failed outside the checkout, the demo too); the
    package list is explicit, so a new sub-package must be added to it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("medrecon", "operators", "pipelines")
             for p in (ROOT / top).rglob("__init__.py")}
    assert set(tool["packages"]) == found | {"pipelines.configs"}
    assert tool["package-dir"]["pipelines.configs"] == "configs" and tool["package-data"]["pipelines.configs"] == [
        "*.yaml"]
    assert sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))  # what the mapping installs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # the declared licence's text ships
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    manifest = (ROOT / "MANIFEST.in").read_text()  # the sdist can run the README's test command
    assert all(line in manifest for line in ("graft tests", "graft configs", "include Makefile"))


def test_pacs_without_pynetdicom_is_one_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynetdicom" else real(name, *a))
    assert main(["pacs", "echo", "--host", "127.0.0.1", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs pynetdicom" in err and "pip install 'medrecon[pacs]'" in err and "Traceback" not in err


def test_a_fetch_without_pip_says_so(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
    from medrecon.errors import InputError
    with pytest.raises(InputError, match=r"needs pip, which this Python .* does not have: install it"):
        datasets.download_sdist(datasets.SCANS["ct_lung1"], tmp_path)


@pytest.mark.slow
def test_the_built_wheel_holds_the_configs_the_priors_and_the_licence(tmp_path):
    """What the explicit package list promises, in the artefact itself (needs pip and the build backend from the
    package index)."""
    import subprocess
    import sys
    import zipfile
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip().splitlines()[-1:]}")
    names = set(zipfile.ZipFile(next(tmp_path.glob("medrecon-*.whl"))).namelist())
    assert {f"pipelines/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")} <= names
    assert "medrecon/assets/priors/ct_patch/model_card.yaml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
