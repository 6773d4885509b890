"""The demo's pipeline config: the shipped template with the demo's overlay and this run's settings.

``include/config/pipeline.yaml`` is the production template; ``config/pipeline.demo.yaml`` beside this
file lists only what the demo changes. What depends on the run (localaws's address, the demo's home
folder, the sync schedule) is filled in here, and the result is written as one file that Airflow reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from finetune_pipeline.pipeline.config import PipelineConfig, parse_config
from localaws.snowball.device import DEVICE_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO_ROOT / "include" / "config" / "pipeline.yaml"
OVERLAY_PATH = Path(__file__).resolve().parent / "config" / "pipeline.demo.yaml"
# The job's id is known only at run time: the load task renders it from the create_job task's XCom.
_JOB_ID = "{{ ti.xcom_pull(task_ids='snowball.create_job') }}"


def _merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if nested else value
    return merged


def demo_config_data(
    *, home: Path, localaws_url: str, sync_every_minutes: int | None = None, overrides: dict | None = None
) -> dict[str, Any]:
    """The demo's config as YAML data, with relative paths still relative to the template's folder."""
    data = _merged(yaml.safe_load(TEMPLATE_PATH.read_text()), yaml.safe_load(OVERLAY_PATH.read_text()))
    data.pop("devstack", None)
    run = {"snowball": {"export_dir": str(home / "export"),
                        "device_endpoint_url": f"{localaws_url.rstrip('/')}{DEVICE_PREFIX}{_JOB_ID}"}}
    if sync_every_minutes:
        run["sync"] = {"schedule": f"*/{sync_every_minutes} * * * *"}
    return _merged(_merged(data, run), overrides or {})


def demo_source_url() -> str | None:
    """The existing source server the demo should use instead of the embedded one, if any."""
    import os

    overlay = yaml.safe_load(OVERLAY_PATH.read_text()).get("devstack") or {}
    return os.environ.get("FINETUNE_DEMO_SOURCE_URL") or overlay.get("source_url") or None


def demo_config(**kwargs: Any) -> PipelineConfig:
    """The demo's config, validated (see :func:`demo_config_data` for the arguments)."""
    return parse_config(demo_config_data(**kwargs), "the demo config", base_dir=TEMPLATE_PATH.parent)


def write_demo_config(path: Path, **kwargs: Any) -> Path:
    """Write the demo's config to ``path`` with every path absolute, so it can live anywhere."""
    config = demo_config(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by devstack from {TEMPLATE_PATH.relative_to(REPO_ROOT)} and "
              f"{OVERLAY_PATH.relative_to(REPO_ROOT)}; edit those instead.\n")
    path.write_text(header + yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True),
                                            sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m devstack.config OUT --localaws-url URL --home DIR``: write the demo's config (compose's init)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("output", type=Path)
    parser.add_argument("--localaws-url", required=True)
    parser.add_argument("--home", type=Path, required=True, help="the demo's folder (export, state)")
    parser.add_argument("--sync-every-minutes", type=int)
    args = parser.parse_args(argv)
    write_demo_config(args.output, home=args.home, localaws_url=args.localaws_url,
                      sync_every_minutes=args.sync_every_minutes)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
