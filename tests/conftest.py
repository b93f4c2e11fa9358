"""Shared test setup: every tool's state goes under a temporary work folder, never $HOME."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_WORK = Path(tempfile.mkdtemp(prefix="fgpo-test-work-"))
os.environ["FGPO_WORK_DIR"] = str(_WORK)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from fgpo_tasks.env import setup_environment  # noqa: E402

setup_environment(_WORK)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("FGPO_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip with a reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set FGPO_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def created_at() -> str:
    return "2026-01-01T00:00:00+00:00"


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU spinning threads stall (20x)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
