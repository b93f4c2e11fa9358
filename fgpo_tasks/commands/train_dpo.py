"""fgpo train-dpo: train a policy with DPO / IPO / cDPO / DFPO on a pair directory.

One process: runs in place. Several: set ``accelerate_config`` in the config to a YAML under
configs/accelerate/ whose num_processes > 1, and this command relaunches itself through
``accelerate launch --config_file <it> -m fgpo_tasks.cli train-dpo ...``; or launch it so directly.
Run again with the same arguments after a crash or kill: it resumes from the newest checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HELP = "train a policy with DPO (sigmoid, ipo, cdpo, dfpo) on a pair directory, resumably"


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="pair directory (pairs.parquet + manifest.json)")
    parser.add_argument("--config", required=True, help="DPOConfig YAML (configs/dpo/)")
    parser.add_argument("--out", required=True, help="output model directory (written atomically)")


LAUNCHED = "FGPO_ACCELERATE_LAUNCHED"  # set on the processes we launch, so they never relaunch


def launched_by_accelerate() -> bool:
    """True inside a process started by our relaunch, accelerate launch or torchrun."""
    return any(k in os.environ for k in (LAUNCHED, "WORLD_SIZE", "LOCAL_RANK"))


def num_processes(accelerate_config: str) -> int:
    from fgpo_tasks.config import read_yaml
    return int(read_yaml(accelerate_config).get("num_processes", 1))


def launch_command(args, accelerate_config: str, created_at: str) -> list[str]:
    """The argv that reruns this command under ``accelerate launch`` (same arguments, same timestamp)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
            "-m", "fgpo_tasks.cli", "--created-at", created_at, "train-dpo",
            "--data", str(args.data), "--config", str(args.config), "--out", str(args.out)]


def main(args) -> dict | None:
    from fgpo_tasks.config import load_config
    from fgpo_tasks.dpo.config import DPOConfig
    from fgpo_tasks.errors import ConfigError, FgpoError
    from fgpo_tasks.provenance import run_timestamp

    config = load_config(DPOConfig, args.config)
    created_at = run_timestamp(args.created_at)
    if config.accelerate_config and not launched_by_accelerate():
        if not Path(config.accelerate_config).is_file():
            raise ConfigError(f"accelerate_config: file not found: {config.accelerate_config}")
        if num_processes(config.accelerate_config) > 1:
            code = subprocess.call(launch_command(args, config.accelerate_config, created_at),
                                   env={**os.environ, LAUNCHED: "1"})
            if code != 0:
                raise FgpoError(f"accelerate launch exited with code {code}")
            return None  # the launched main process printed the result

    from fgpo_tasks.dpo.train import run_train_dpo
    from accelerate import PartialState

    result = run_train_dpo(args.data, args.out, config, created_at)
    return result if PartialState().is_main_process else None
