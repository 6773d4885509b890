"""Fixtures for the dataset tests: a bucket-like local store, an Iceberg SQL catalog on SQLite with its
warehouse in that store, small contracts and a sync spec."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ds_helpers import DEMO_CONTRACTS, ITEMS_YAML, T0

from finetune_pipeline.datasets.catalog import CatalogSpec
from finetune_pipeline.datasets.contracts import load_contract
from finetune_pipeline.datasets.store import LocalStore
from finetune_pipeline.datasets.sync import SyncSpec


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "bucket")


@pytest.fixture
def catalog_spec(tmp_path, store) -> CatalogSpec:
    return CatalogSpec(uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=store.location("warehouse"))


@pytest.fixture
def contracts_dir(tmp_path) -> Path:
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "shop.items.yaml").write_text(ITEMS_YAML)
    return folder


@pytest.fixture
def items_contract(contracts_dir):
    return load_contract(contracts_dir / "shop.items.yaml")


@pytest.fixture
def demo_contracts_dir(tmp_path) -> Path:
    folder = tmp_path / "demo-contracts"
    shutil.copytree(DEMO_CONTRACTS, folder)
    return folder


@pytest.fixture
def spec(contracts_dir, catalog_spec) -> SyncSpec:
    return SyncSpec(
        landing_prefix="landing",
        dataset_prefix="datasets/shop",
        contracts_dir=contracts_dir,
        catalog=catalog_spec,
        snapshot_position=T0,
    )
