"""Log-probs of responses and the preference losses: flat branches over ``loss_type``, each cited."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fgpo_tasks.dpo.config import LOSS_TYPES


class _HeadLogProbs(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[labels] for one chunk of rows, saving only what is (N, H) or
    (N,) for the backward: the forward keeps the logsumexp per row, the backward recomputes the
    chunk's (N, V) logits from ``hidden`` (the matmul in the forward's dtype) and turns them into
    the softmax in place. So memory held between forward and backward grows with the response
    tokens times the hidden size, never with the vocabulary: one (chunk, V) fp32 block is alive at
    a time, in the forward and again in the backward (tests/test_dpo_memory.py). The gradient
    scales the (N, H) side of the two matmuls (softmax's 1/s folded into exp(logits - lse))."""

    @staticmethod
    def forward(ctx, hidden, weight, labels):
        logits = hidden @ weight.t()  # (N, V); bf16 under autocast
        ctx.mm_dtype = logits.dtype
        logits = logits.float()  # fp32 softmax
        picked = logits.gather(-1, labels[:, None])[:, 0]
        lse = torch.logsumexp(logits, dim=-1)
        del logits
        ctx.save_for_backward(hidden, weight, labels, lse)
        return picked - lse

    @staticmethod
    def backward(ctx, grad):
        # d logp_i / d logits_i = onehot(label_i) - softmax_i, softmax_i = exp(logits_i - lse_i)
        hidden, weight, labels, lse = ctx.saved_tensors
        dt = ctx.mm_dtype
        h, w = hidden.to(dt), weight.to(dt)
        g = grad.float()
        p = (h @ w.t()).float().sub_(lse[:, None]).exp_().mul_(-g[:, None])  # (N, V): -g * softmax
        p = p.to(dt)
        gh = g[:, None].to(dt)
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (p @ w + gh * w[labels]).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = (p.t() @ h).index_add_(0, labels, gh * h).to(weight.dtype)
        return grad_hidden, grad_weight, None


def _module_logps(lm_head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = lm_head(h).float()  # (n, V)
    return logits.gather(-1, y[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def token_logps(hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor, chunk: int,
                fused: bool = True) -> torch.Tensor:
    """log p(label) for each row of ``hidden`` (N, H), the LM head applied ``chunk`` rows at a time.

    Naive equivalent: ``torch.log_softmax(lm_head(hidden).float(), -1).gather(-1, labels[:, None])[:, 0]``;
    chunking bounds the (chunk, vocab) logits alive at once, in the forward and in the backward
    (nothing vocabulary-sized is kept for the backward). ``fused`` runs _HeadLogProbs on the head's
    weight (a bias-free linear head); otherwise the head module itself is called, which FSDP and
    ZeRO-3 need to gather a sharded head, under activation checkpointing per chunk (the backward
    calls the head again) so that its logits are not kept either.
    """
    from torch.utils.checkpoint import checkpoint

    fused = fused and getattr(lm_head, "bias", None) is None and isinstance(lm_head, nn.Linear)
    out = []
    for start in range(0, hidden.size(0), chunk):
        h, y = hidden[start:start + chunk], labels[start:start + chunk]
        if fused:
            out.append(_HeadLogProbs.apply(h, lm_head.weight, y))
        elif torch.is_grad_enabled():
            out.append(checkpoint(_module_logps, lm_head, h, y, use_reentrant=False))
        else:
            out.append(_module_logps(lm_head, h, y))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


class SequenceLogps(nn.Module):
    """Wraps a causal LM: forward returns each sequence's summed log-prob of its response tokens.

    The LM head runs only at the positions that predict a response token: prompt and padding
    positions never reach the (vocabulary-sized) head, which dominates a small model's compute.
    It is a module so that DDP, FSDP and DeepSpeed wrap it and its forward runs their hooks.
    """

    def __init__(self, lm: nn.Module, chunk: int = 4096, fused: bool = True):
        super().__init__()
        self.lm = lm
        self.chunk = chunk
        self.fused = fused  # False under FSDP / ZeRO-3, whose sharded head must be called as a module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                response_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                seq_index: torch.Tensor | None = None) -> torch.Tensor:
        """(R,) summed response log-probs: one per row of a padded batch (R, T), or with
        ``seq_index`` one per sequence of a packed batch (1, N) (data.collate_packed)."""
        backbone = self.lm.get_decoder()
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state  # (R, T, H)
        target = response_mask[:, 1:].bool()  # (R, T-1): position t predicts token t+1
        if seq_index is not None:  # packed: t predicts t+1 only inside one sequence
            target &= seq_index[:, 1:] == seq_index[:, :-1]
        logps = token_logps(hidden[:, :-1][target], self.lm.get_output_embeddings(),
                            input_ids[:, 1:][target], self.chunk, self.fused)  # (N,)
        if seq_index is not None:
            n_seqs = int(seq_index.max()) + 1
            return logps.new_zeros(n_seqs).index_add_(0, seq_index[:, 1:][target], logps)
        # Back to (R, T-1) and a row sum: torch's pairwise sum, as accurate as fp32 allows.
        return logps.new_zeros(target.shape).masked_scatter(target, logps).sum(dim=1)


def preference_loss(loss_type: str, chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, beta: float, *, label_smoothing: float = 0.0,
                    chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None,
                    pd: torch.Tensor | None = None, num_aspects: int | None = None) -> torch.Tensor:
    """Per-pair loss (B,) from summed response log-probs of the policy and the reference."""
    chosen_logratios = chosen - ref_chosen
    rejected_logratios = rejected - ref_rejected
    delta = chosen_logratios - rejected_logratios

    if loss_type == "sigmoid":
        # DPO, Rafailov et al. 2023 (https://arxiv.org/abs/2305.18290), Eq. 7.
        losses = -F.logsigmoid(beta * delta)

    elif loss_type == "cdpo":
        # Conservative DPO: labels are flipped with probability label_smoothing. Mitchell 2023, "A note on
        # DPO with noisy preferences & relationship to IPO" (https://ericmitchell.ai/cdpo.pdf), Eq. 3; the
        # 'sigmoid' loss with label_smoothing of TRL < 1.0.
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * delta)
                  - label_smoothing * F.logsigmoid(-beta * delta))

    elif loss_type == "ipo":
        # IPO, Azar et al. 2023 (https://arxiv.org/abs/2310.12036), Eq. 17, beta playing tau. The log-ratios
        # are averaged over response tokens, as TRL 1.16 does (dpo_trainer.py, the 'ipo' branch of
        # _compute_loss: "we confirmed this choice with the IPO authors").
        delta = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2

    elif loss_type == "dfpo":
        # DFPO, Zhang et al. 2025 (https://arxiv.org/abs/2508.07638): -log sigmoid(K * M + PD) with
        # M = beta * delta, the DPO margin, and PD = - sum_{k' != k} [r_k'(x, y_w) - r_k'(x, y_l)]
        # (METHOD.md). PD is added to the argument: PD > 0 (the other aspects prefer the rejected
        # response) lowers the loss and its gradient, so a conflicting pair is satisfied with a
        # smaller margin and pushes the policy less; PD < 0 (the other aspects agree with the label)
        # raises them, so the policy must widen the margin further.
        losses = -F.logsigmoid(num_aspects * beta * delta + pd)

    else:
        raise ValueError(f"Unknown loss_type: {loss_type!r}; expected one of {list(LOSS_TYPES)}")
    return losses


def sft_loss(chosen: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-pair NLL of the chosen response per token (B,): the NLL term of RPO, Pang et al. 2024
    (https://arxiv.org/abs/2404.19733), Eq. 3. Per pair (not per batch token), so gradient
    accumulation and batch size do not change it."""
    return -chosen / chosen_tokens.clamp(min=1)
