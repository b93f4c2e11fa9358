"""`logps_chunk` bounds memory: the response log-probs' forward + backward never hold more than a
few (chunk x vocabulary) blocks, however many response tokens there are.

Peak memory is measured on the CPU, deterministically, by a dispatch mode that records every tensor
storage each torch op creates and drops it once freed (tracemalloc and RSS do not see torch's
allocator reliably); what autograd saves for the backward is counted with saved_tensors_hooks.
"""

from __future__ import annotations

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fgpo_tasks.dpo.losses import token_logps

H, V = 64, 8192
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class PeakBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the block and alive at the same time."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.live:
                s = t.untyped_storage()
                self.live[s.data_ptr()] = (StorageWeakRef(s), s.nbytes())
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def _inputs(n: int):
    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=False)
    return head, torch.randn(n, H, requires_grad=True), torch.randint(0, V, (n,))


def peak_bytes(n: int, chunk: int, fused: bool) -> int:
    head, hidden, labels = _inputs(n)
    with PeakBytes() as m:
        token_logps(hidden, head, labels, chunk, fused).sum().backward()
    return m.peak


@pytest.mark.parametrize("fused", [True, False])
def test_peak_memory_follows_the_chunk_not_the_tokens(fused):
    block = V * 4  # one row of fp32 logits
    n = 2048
    small, mid, large = (peak_bytes(n, c, fused) for c in (64, 256, 1024))
    assert small < mid < large  # the chunk sets the peak ...
    # ... by a few (chunk x V) blocks, plus the (V, H) weight gradient and (N, H) hidden gradient
    fixed = 2 * V * H * 4 + 4 * n * H * 4
    assert large - small < 6 * (1024 - 64) * block
    assert small < fixed + 6 * 64 * block
    # all of one sequence's logits (what the forward used to keep for the backward) never coexist
    assert small < n * block / 4
    # twice the tokens at the same chunk: only the (N, H) and (N,) tensors grow, not (N, V)
    assert peak_bytes(2 * n, 64, fused) - small < 8 * n * H * 4 + 64 * block


@pytest.mark.parametrize("fused", [True, False])
def test_nothing_vocabulary_sized_is_saved_for_backward(fused):
    n = 1024
    head, hidden, labels = _inputs(n)
    inputs = {t.untyped_storage().data_ptr() for t in (hidden, head.weight, labels)}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in inputs:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = token_logps(hidden, head, labels, 128, fused)
    out.sum().backward()
    assert sum(saved.values()) <= n * 8  # the logsumexp per token at most (fp32), never (N, V)


def test_bf16_autocast_gradients_match_fp32():
    head, hidden, labels = _inputs(300)
    ref = token_logps(hidden, head, labels, 64)
    g_ref = torch.autograd.grad(ref.sum(), [hidden, head.weight])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_logps(hidden, head, labels, 64)
    grads = torch.autograd.grad(out.sum(), [hidden, head.weight])
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=0.02, atol=0.1)
    for g, r in zip(grads, g_ref):
        assert g.dtype == r.dtype and torch.allclose(g, r, atol=0.05 * float(r.abs().max()))
