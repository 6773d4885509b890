"""The layer contracts in ``.importlinter`` hold for the checkout, and each one can fail.

``make lint`` and ``make test`` run ``lint-imports`` too; these tests keep the check honest in CI: one run on
the real tree (every contract KEPT), and one run per contract on a throwaway copy with one forbidden import
(that contract BROKEN, naming the import), so a contract that could never fail would show here.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACT_PREFIX = "importlinter:contract:"

# One forbidden import per contract: (file of the copy, line appended to it, module that must be named).
VIOLATIONS = {
    "datasets-no-airflow": ("plugins/finetune_pipeline/datasets/hashing.py", "import airflow.sdk", "airflow"),
    "aws-generic": ("plugins/finetune_pipeline/aws/hooks/dms.py", "import finetune_pipeline.datasets.hashing",
                    "finetune_pipeline.datasets.hashing"),
    "product-no-dev-tools": ("plugins/finetune_pipeline/get_provider_info.py", "import localaws.clock",
                             "localaws.clock"),
    "emulator-standalone": ("localaws/clock.py", "import finetune_pipeline.datasets", "finetune_pipeline.datasets"),
    "dags-product-only": ("dags/finetune_training.py", "import devstack.config", "devstack.config"),
    "export-on-premises": ("plugins/finetune_pipeline/export/load_files.py", "import airflow.sdk", "airflow"),
}


def contract_names() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return {section.removeprefix(CONTRACT_PREFIX): parser[section]["name"]
            for section in parser.sections() if section.startswith(CONTRACT_PREFIX)}


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: import-linter is in requirements-dev.txt (make install)"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    # Wide enough that rich does not wrap a contract's name over two lines.
    env["COLUMNS"] = "1000"
    if pythonpath is not None:
        # Ahead of site-packages, so the copy's finetune_pipeline wins over the editable install's.
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def outcome_lines(output: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary lines."""
    outcomes = {}
    for line in output.splitlines():
        for word in ("KEPT", "BROKEN"):
            if line.rstrip().endswith(f" {word}"):
                outcomes[line.rstrip().removesuffix(f" {word}")] = word
    return outcomes


def test_every_contract_has_a_violation_case():
    assert contract_names(), f"no contracts in {CONFIG}"
    assert set(VIOLATIONS) == set(contract_names())


def test_checkout_keeps_every_contract():
    result = lint_imports(REPO_ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    names = contract_names()
    assert outcome_lines(output) == {name: "KEPT" for name in names.values()}, output
    assert f"Contracts: {len(names)} kept, 0 broken." in output


@pytest.fixture(scope="module")
def copy_source(tmp_path_factory):
    """What lint-imports reads, copied once: the package, the emulator, the dev stack, the DAGs, the config."""
    source = tmp_path_factory.mktemp("layers-source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("plugins", "localaws", "devstack", "dags"):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=ignore)
    shutil.copy2(CONFIG, source / CONFIG.name)
    return source


@pytest.mark.parametrize("contract", sorted(VIOLATIONS))
def test_a_forbidden_import_breaks_its_contract(contract, copy_source, tmp_path):
    scratch = tmp_path / "tree"
    shutil.copytree(copy_source, scratch)
    relative, line, imported = VIOLATIONS[contract]
    target = scratch / relative
    target.write_text(target.read_text() + f"\n{line}\n")
    result = lint_imports(scratch, pythonpath=scratch / "plugins")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    name = contract_names()[contract]
    assert outcome_lines(output)[name] == "BROKEN", output
    # The report names the import that was added, with its line, so it came from the copy, not the checkout.
    importer = relative.removeprefix("plugins/").removesuffix(".py").replace("/", ".")
    line_number = len(target.read_text().splitlines())
    assert f"{importer} -> {imported} (l.{line_number})" in output, output
