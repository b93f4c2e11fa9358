"""DPO-family training (DPO, IPO, conservative DPO, DFPO) on Hugging Face Accelerate.

``config.py`` the stage's config, ``data.py`` tokens and batches, ``tokenstore.py`` the pairs
tokenised once into a memory-mapped Arrow file shared by every process, ``losses.py`` log-probs and
losses, ``refcache.py`` the reference log-probs (Arrow columns beside the token store),
``train.py`` the loop, top to bottom.
"""

from fgpo_tasks.dpo.config import DPOConfig

__all__ = ["DPOConfig", "run_train_dpo"]


def run_train_dpo(*args, **kwargs):
    """See ``fgpo_tasks.dpo.train.run_train_dpo`` (imported lazily: it pulls in torch)."""
    from fgpo_tasks.dpo.train import run_train_dpo as run
    return run(*args, **kwargs)
