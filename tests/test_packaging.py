"""Both ways the package reaches an Airflow deployment work: pip-installed from a wheel, and plugins/ copied.

Each check runs in a child ``python -S -P``: no site processing, so the editable install's .pth (which puts
this checkout's plugins/ on the path) is not read, and no script directory in front. The child's path is
only what the deployment shape gives, plus the venv's site-packages for Airflow and the other dependencies;
the child then proves, through ``__file__``, where finetune_pipeline came from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_SOURCE = REPO_ROOT / "plugins" / "finetune_pipeline"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
UV = Path(sys.executable).with_name("uv")
DISTRIBUTION = "finetune-pipeline"
EXPECTED_DAGS = {"finetune_bulk_transfer", "finetune_cdc_replication", "finetune_incremental_sync",
                 "finetune_training"}
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info")


def child_env(tmp: Path, pythonpath: list[str], **airflow) -> dict[str, str]:
    """This process's environment without its Airflow, pipeline and Python settings, plus a fresh Airflow home."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW", "FINETUNE_PIPELINE", "PYTHON"))}
    home = tmp / "airflow-home"
    home.mkdir(exist_ok=True)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": os.pathsep.join(pythonpath),
    })
    env.update(airflow)
    return env


@pytest.fixture(scope="module")
def site_packages(tmp_path_factory) -> str:
    """The venv's site-packages as a deployment has it: without the editable install of this checkout.

    Its dist-info would otherwise register the provider entry point in the child even where the package is not
    on the path (Airflow loads provider entry points while reading its config, before it adds plugins_folder).
    """
    view = tmp_path_factory.mktemp("site-packages")
    for entry in Path(SITE_PACKAGES).iterdir():
        if not entry.name.startswith(("finetune_pipeline", "__editable__.finetune_pipeline")):
            (view / entry.name).symlink_to(entry)
    return str(view)


def run_child(code: str, env: dict[str, str], cwd: Path) -> dict:
    result = subprocess.run([sys.executable, "-S", "-P", "-c", code], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def package_files(suffix_filter) -> set[str]:
    return {path.relative_to(PACKAGE_SOURCE.parent).as_posix() for path in PACKAGE_SOURCE.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and suffix_filter(path.suffix)}


# ---------------------------------------------------------------------------------------------------------
# a. pip-installed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the project (setuptools writes build/ and *.egg-info beside its input)."""
    assert UV.exists(), f"{UV} missing (make install puts uv in the venv)"
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (REPO_ROOT / name).exists():
            shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "plugins", source / "plugins", ignore=IGNORE)
    # The venv's setuptools (a dependency of the pin set), so the build needs no download.
    subprocess.run([str(UV), "build", "--wheel", "--no-build-isolation", "--python", sys.executable,
                    "--out-dir", str(tmp / "dist"), str(source)],
                   check=True, capture_output=True, text=True, timeout=120)
    (built,) = (tmp / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("target")
    subprocess.run([str(UV), "pip", "install", "--python", sys.executable, "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=120)
    return target


def test_wheel_ships_the_package_and_its_data_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/", 1)[0] for name in names}
    assert top_level == {"finetune_pipeline", "finetune_pipeline-0.1.0.dist-info"}, top_level
    for unwanted in ("tests/", "devstack/", "localaws/", "dags/", "include/", "plugins/"):
        assert not any(name.startswith(unwanted) or f"/{unwanted}" in name for name in names), unwanted
    # Every module (a subpackage without __init__.py would be left out) and every data file of the source.
    assert package_files(lambda suffix: suffix == ".py") <= names
    data = package_files(lambda suffix: suffix not in (".py", ".pyc"))
    assert {"finetune_pipeline/aws/waiters/snowball.json",
            "finetune_pipeline/aws/waiters/sagemaker_hyperpod.json"} <= data
    assert data <= names, sorted(data - names)
    entry_points = zipfile.ZipFile(wheel).read("finetune_pipeline-0.1.0.dist-info/entry_points.txt").decode()
    assert "[apache_airflow_provider]" in entry_points


PIP_INSTALLED_CHILD = r"""
import importlib, json, sys
from importlib import metadata
from pathlib import Path

target = Path(TARGET)
modules = sorted(
    "finetune_pipeline.aws." + kind + "." + path.stem
    for kind in ("hooks", "triggers")
    for path in (target / "finetune_pipeline" / "aws" / kind).glob("*.py") if path.stem != "__init__"
)
for name in modules:
    importlib.import_module(name)

from finetune_pipeline.aws.waiters import waiter_file
waiters = {service: str(waiter_file(service)) for service in ("snowball", "sagemaker_hyperpod")}
waiters_exist = all(Path(path).is_file() for path in waiters.values())
for path in waiters.values():
    json.loads(Path(path).read_text())

# The distribution the wheel installed (the venv also holds the editable install's dist-info).
(dist,) = [d for d in metadata.distributions(path=[str(target)]) if d.metadata["Name"] == "finetune-pipeline"]
(entry_point,) = dist.entry_points.select(group="apache_airflow_provider")
provider_info = entry_point.load()()

import airflow, jsonschema
from packaging.utils import canonicalize_name

schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
jsonschema.validators.validator_for(schema)(schema).validate(provider_info)
listed = [m for section in ("hooks", "triggers") for item in provider_info.get(section, [])
          for m in item["python-modules"]]
for name in listed:
    importlib.import_module(name)
for class_path in provider_info.get("extra-links", []):
    module_name, _, class_name = class_path.rpartition(".")
    getattr(importlib.import_module(module_name), class_name)

# What `airflow providers list` does: discovery through the entry point, schema and package-name checks included.
from airflow.providers_manager import ProvidersManager
manager = ProvidersManager()
manager.initialize_providers_list()

loaded = {name: module.__file__ for name, module in sys.modules.items()
          if name.split(".")[0] == "finetune_pipeline" and getattr(module, "__file__", None)}
print(json.dumps({
    "modules": modules, "listed": listed, "waiters": waiters, "waiters_exist": waiters_exist,
    "loaded": loaded, "dist_name": dist.metadata["Name"], "canonical": canonicalize_name(dist.metadata["Name"]),
    "package_name": provider_info.get("package-name"), "entry_point": entry_point.value,
    "discovered": manager.providers.get("finetune-pipeline") and manager.providers["finetune-pipeline"].version,
    "sys_path": sys.path,
}))
"""


def test_pip_installed_package_imports_and_registers_as_a_provider(installed, site_packages, tmp_path):
    code = PIP_INSTALLED_CHILD.replace("TARGET", repr(str(installed)))
    env = child_env(tmp_path, [str(installed), site_packages],
                    AIRFLOW__CORE__PLUGINS_FOLDER=str(tmp_path / "no-plugins"))
    report = run_child(code, env, cwd=tmp_path)
    assert str(REPO_ROOT / "plugins") not in report["sys_path"]
    assert report["loaded"] and all(Path(path).is_relative_to(installed) for path in report["loaded"].values()), \
        report["loaded"]
    hooks = {m for m in report["modules"] if ".hooks." in m}
    triggers = {m for m in report["modules"] if ".triggers." in m}
    assert hooks and triggers
    assert set(report["modules"]) <= set(report["loaded"])
    assert set(report["listed"]) <= set(report["modules"])
    assert report["waiters_exist"], report["waiters"]
    assert all(Path(path).is_relative_to(installed) for path in report["waiters"].values())
    assert report["entry_point"] == "finetune_pipeline.get_provider_info:get_provider_info"
    assert report["dist_name"] == DISTRIBUTION
    assert report["package_name"] == report["canonical"] == DISTRIBUTION
    assert report["discovered"] == "0.1.0"


# ---------------------------------------------------------------------------------------------------------
# b. plugins/ copied into the deployment (MWAA, Astro)


COPIED_PLUGINS_CHILD = r"""
import json, sys
from pathlib import Path

import airflow  # puts [core] plugins_folder on sys.path, as on MWAA and Astro
from airflow import plugins_manager
from airflow.configuration import conf
from airflow.dag_processing.dagbag import DagBag

import finetune_pipeline
from finetune_pipeline.aws.waiters import waiter_file
from finetune_pipeline.pipeline.config import config_path

bag = DagBag(dag_folder=conf.get("core", "dags_folder"))
plugins_manager.ensure_plugins_loaded()
plugins_folder = Path(conf.get("core", "plugins_folder")).resolve()
from_plugins = sorted(name for name, module in sys.modules.items() if getattr(module, "__file__", None)
                      and Path(module.__file__).resolve().is_relative_to(plugins_folder))
print(json.dumps({
    "package_file": finetune_pipeline.__file__, "config_path": str(config_path()),
    "waiter": str(waiter_file("snowball")), "waiter_exists": waiter_file("snowball").is_file(),
    "import_errors": bag.import_errors, "dag_ids": sorted(bag.dag_ids),
    "plugin_errors": plugins_manager.get_import_errors(), "from_plugins": from_plugins, "sys_path": sys.path,
}))
"""


def test_copied_plugins_folder_provides_the_package_and_the_dags_parse(site_packages, tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(REPO_ROOT / "plugins", deploy / "plugins", ignore=IGNORE)
    assert (deploy / "plugins" / ".airflowignore").is_file()
    shutil.copytree(REPO_ROOT / "dags", deploy / "dags", ignore=IGNORE)
    shutil.copytree(REPO_ROOT / "include", deploy / "include", ignore=IGNORE)
    env = child_env(tmp_path, [site_packages],
                    AIRFLOW__CORE__DAGS_FOLDER=str(deploy / "dags"),
                    AIRFLOW__CORE__PLUGINS_FOLDER=str(deploy / "plugins"))
    report = run_child(COPIED_PLUGINS_CHILD, env, cwd=tmp_path)
    assert str(REPO_ROOT / "plugins") not in report["sys_path"]
    assert Path(report["package_file"]).is_relative_to(deploy / "plugins"), report["package_file"]
    assert Path(report["waiter"]).is_relative_to(deploy / "plugins") and report["waiter_exists"]
    assert Path(report["config_path"]) == (deploy / "include" / "config" / "pipeline.yaml").resolve()
    assert report["import_errors"] == {}
    assert set(report["dag_ids"]) == EXPECTED_DAGS
    # .airflowignore keeps the plugin manager from exec'ing the package's modules as top-level plugins.
    assert report["plugin_errors"] == {}
    assert all(name.split(".")[0] == "finetune_pipeline" for name in report["from_plugins"]), report["from_plugins"]


# ---------------------------------------------------------------------------------------------------------
# c. what the package declares


def _imported_libraries() -> dict[str, set[str]]:
    """Every third-party top-level module the package imports, with the files that import it."""
    import ast

    found: dict[str, set[str]] = {}
    for path in PACKAGE_SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names and top != "finetune_pipeline":
                    found.setdefault(top, set()).add(path.relative_to(PACKAGE_SOURCE).as_posix())
    return found


def test_every_library_the_package_imports_is_declared_in_pyproject():
    """A ``pip install finetune-pipeline`` (with the extra a feature names) brings every library the package
    imports itself, not only through another package's dependencies."""
    import importlib.metadata
    import re
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {canonical(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]) for r in requirements}
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, files in _imported_libraries().items():
        # Airflow's namespace spans its core and its providers; a module not installed here is its own name.
        installed_as = distributions.get(module, [module])
        names = {"apache-airflow"} if module == "airflow" else {canonical(d) for d in installed_as}
        if not names & declared:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
