"""Environment hygiene: every tool's home, cache and telemetry points inside the work folder.

Nothing fgpo runs should write into the user's home directory. ``setup_environment`` only sets
variables that are not already set, so a user's explicit choice always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

WORK_DIR_VAR = "FGPO_WORK_DIR"


def work_dir() -> Path:
    """The folder for fgpo's state and caches: $FGPO_WORK_DIR, else ./work."""
    return Path(os.environ.get(WORK_DIR_VAR, "work")).resolve()


def environment_defaults(root: Path) -> dict[str, str]:
    """The variables fgpo sets (when unset) so that no tool writes into $HOME."""
    return {
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "HF_HOME": str(root / "cache" / "huggingface"),
        "HF_DATASETS_CACHE": str(root / "cache" / "huggingface" / "datasets"),
        "TRITON_CACHE_DIR": str(root / "cache" / "triton"),
        "MPLCONFIGDIR": str(root / "cache" / "matplotlib"),
        "XDG_CACHE_HOME": str(root / "cache"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "GX_ANALYTICS_ENABLED": "False",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def setup_environment(root: Path | None = None) -> Path:
    """Point caches, homes and telemetry inside ``root`` (default: ``work_dir()``)."""
    root = Path(root) if root else work_dir()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(WORK_DIR_VAR, str(root))
    for key, value in environment_defaults(root).items():
        os.environ.setdefault(key, value)
    return root
