"""Log-probs of responses and the preference losses: flat branches over ``loss_type``, each cited."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fgpo_tasks.dpo.config import LOSS_TYPES


class _HeadLogProbs(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[labels] with a backward that never touches the (N, V) logits
    elementwise: the forward keeps e = exp(logits - max) and s = sum(e); in the backward the
    softmax's 1/s and the incoming gradient scale the (N, H) side of the two matmuls instead.
    Four elementwise passes over (N, V) in all, where autograd's log_softmax + gather take ~10."""

    @staticmethod
    def forward(ctx, hidden, weight, labels):
        logits = hidden @ weight.t()  # (N, V)
        logits = logits.float() if logits.element_size() < 4 else logits  # bf16 under autocast: fp32 softmax
        picked = logits.gather(-1, labels[:, None])[:, 0]
        peak = logits.amax(dim=-1, keepdim=True)
        e = logits.sub_(peak).exp_()  # in place: (N, V) exp(logits - max), each in (0, 1]
        total = e.sum(dim=-1)
        ctx.save_for_backward(hidden, weight, labels, e, total)
        return picked - peak[:, 0] - total.log()

    @staticmethod
    def backward(ctx, grad):
        # d logp_i / d logits_i = onehot(label_i) - e_i / s_i
        hidden, weight, labels, e, total = ctx.saved_tensors
        g = grad.to(e.dtype)
        scale = (-g / total)[:, None]  # (N, 1): the softmax's 1/s and the incoming gradient
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            w = weight.to(e.dtype)
            grad_hidden = scale * (e @ w) + g[:, None] * w[labels]
            grad_hidden = grad_hidden.to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            h = hidden.to(e.dtype)
            grad_weight = (e.t() @ (scale * h)).index_add_(0, labels, g[:, None] * h).to(weight.dtype)
        return grad_hidden, grad_weight, None


def token_logps(hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor, chunk: int,
                fused: bool = True) -> torch.Tensor:
    """log p(label) for each row of ``hidden`` (N, H), the LM head applied ``chunk`` rows at a time.

    Naive equivalent: ``torch.log_softmax(lm_head(hidden).float(), -1).gather(-1, labels[:, None])[:, 0]``;
    chunking bounds the (chunk, vocab) logits alive at once. ``fused`` runs _HeadLogProbs on the
    head's weight (a bias-free linear head); otherwise the head module itself is called, which
    FSDP and ZeRO-3 need to gather a sharded head.
    """
    fused = fused and getattr(lm_head, "bias", None) is None and isinstance(lm_head, nn.Linear)
    out = []
    for start in range(0, hidden.size(0), chunk):
        h, y = hidden[start:start + chunk], labels[start:start + chunk]
        if fused:
            out.append(_HeadLogProbs.apply(h, lm_head.weight, y))
        else:
            logits = lm_head(h).float()  # (n, V)
            out.append(logits.gather(-1, y[:, None])[:, 0] - torch.logsumexp(logits, dim=-1))
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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_mask: torch.Tensor) -> torch.Tensor:
        backbone = self.lm.get_decoder()
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).last_hidden_state  # (R, T, H)
        target = response_mask[:, 1:].bool()  # (R, T-1): position t predicts token t+1
        logps = token_logps(hidden[:, :-1][target], self.lm.get_output_embeddings(),
                            input_ids[:, 1:][target], self.chunk, self.fused)  # (N,)
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
