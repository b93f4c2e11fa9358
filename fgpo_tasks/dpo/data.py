"""Pairs to tokens to batches: tokenisation, truncation that keeps the response, length-grouped order.

A pair becomes three token lists: ``prompt``, ``chosen`` and ``rejected`` (the responses without
the prompt). The model sees ``prompt + chosen`` and ``prompt + rejected``; only response tokens
count in the log-probs (the prompt is masked out).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class PairTokens:
    """Token ids of every pair, in the order of the pair table."""

    pair_id: list[str]
    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    n_truncated: int = 0

    def __len__(self) -> int:
        return len(self.pair_id)

    def lengths(self) -> np.ndarray:
        """Tokens in a pair's longer sequence: what its padded batch row costs."""
        return np.array([len(p) + max(len(c), len(r))
                         for p, c, r in zip(self.prompt, self.chosen, self.rejected)], dtype=np.int64)

    def fingerprint(self) -> str:
        """sha256 of every pair's token ids, independent of row order (``tokens_fingerprint``)."""
        return tokens_fingerprint(self.to_arrow())

    def to_arrow(self):
        """The pairs as an Arrow table: pair_id (string), prompt / chosen / rejected (list<int32>)."""
        import pyarrow as pa

        ids = pa.list_(pa.int32())
        return pa.table({"pair_id": pa.array(self.pair_id, pa.string()), "prompt": pa.array(self.prompt, ids),
                         "chosen": pa.array(self.chosen, ids), "rejected": pa.array(self.rejected, ids)})


FINGERPRINT_VERSION = b"pair-tokens-v2"
FINGERPRINT_ROWS = 1 << 16  # rows hashed per block: part of the definition, never change it alone


def tokens_fingerprint(table) -> str:
    """sha256 of the pairs' token ids in an Arrow table (pair_id, prompt, chosen, rejected),
    independent of row order: rows sorted by pair_id, then per block of FINGERPRINT_ROWS rows each
    column's lengths (int64) and values (utf-8 bytes, int32 ids). Vectorised: a memory-mapped
    store of a million pairs hashes in seconds, and an in-memory PairTokens hashes the same."""
    import pyarrow as pa
    import pyarrow.compute as pc

    h = hashlib.sha256(FINGERPRINT_VERSION)
    order = pc.sort_indices(table["pair_id"]) if table.num_rows else pa.array([], pa.int64())
    for start in range(0, table.num_rows, FINGERPRINT_ROWS):
        part = table.take(order[start:start + FINGERPRINT_ROWS])
        for name in ("pair_id", "prompt", "chosen", "rejected"):
            col = part[name].combine_chunks()
            if name == "pair_id":
                h.update(pc.binary_length(col).to_numpy().astype(np.int64).tobytes())
                h.update("".join(col.to_pylist()).encode())
            else:
                h.update(pc.list_value_length(col).to_numpy().astype(np.int64).tobytes())
                h.update(col.flatten().to_numpy().astype(np.int32).tobytes())
    return h.hexdigest()


def common_prefix_length(a: list[int], b: list[int]) -> int:
    m = min(len(a), len(b))
    if a[:m] == b[:m]:  # the usual case (the prompt is a prefix of prompt + response), compared in C
        return m
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def truncate(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int,
             max_prompt_length: int) -> tuple[list[int], list[int], list[int]]:
    """Fit ``prompt + response`` into ``max_length`` while keeping as much response as possible.

    When the pair is too long, the prompt keeps its LAST ``max_prompt_length`` tokens (the question
    and the generation prompt sit at its end), then each response keeps its first tokens. This is the
    rule of TRL's pre-1.0 DPO collator (prompt ``keep_end``, response ``keep_start``).
    """
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest > max_length and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
    room = max_length - len(prompt)
    return prompt, chosen[:room], rejected[:room]


def _conversation(row) -> list[dict]:
    messages = row.get("prompt_messages")
    if messages is not None and len(messages) > 0:
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    return [{"role": "user", "content": row["prompt"]}]


TOKENIZE_VERSION = "tokenize-v1"  # bump when the tokens tokenize_rows makes change for the same inputs


def tokenize_pairs(df: pd.DataFrame, tokenizer, max_length: int, max_prompt_length: int) -> PairTokens:
    """Token ids of every pair of a table (``tokenize_rows`` on its rows)."""
    return tokenize_rows(df.to_dict(orient="records"), tokenizer, max_length, max_prompt_length)


def tokenize_rows(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int,
                  quiet: bool = False) -> PairTokens:
    """Token ids of pairs (dicts with pair_id, prompt, chosen, rejected, optional prompt_messages),
    as TRL's DPOTrainer builds them, then truncated.

    With a chat template: the prompt is the conversation (``prompt_messages``, else the prompt text
    as one user turn) rendered with the generation prompt, and each response is an assistant turn
    appended to it. Without one: plain text, with EOS appended to each response. Either way the
    response starts where the tokenised prompt and prompt+response first differ (TRL 1.16,
    ``DPOTrainer._prepare_dataset``), so a template that renders the prompt differently alone
    cannot shift the mask. Each row is tokenised on its own, so any split into batches gives the
    same tokens (the token store tokenises in batches).
    """
    if getattr(tokenizer, "chat_template", None):
        convs = [_conversation(row) for row in rows]
        render = lambda cs, **kw: tokenizer.apply_chat_template(cs, tokenize=False, **kw) if cs else []  # noqa: E731
        prompts = render(convs, add_generation_prompt=True)  # one batched call renders each conversation
        chosen = render([c + [{"role": "assistant", "content": r["chosen"]}] for c, r in zip(convs, rows)])
        rejected = render([c + [{"role": "assistant", "content": r["rejected"]}] for c, r in zip(convs, rows)])
        special = False  # the template writes its own special tokens
    else:
        eos = tokenizer.eos_token or ""
        prompts = [r["prompt"] for r in rows]
        chosen = [r["prompt"] + r["chosen"] + ("" if r["chosen"].endswith(eos) else eos) for r in rows]
        rejected = [r["prompt"] + r["rejected"] + ("" if r["rejected"].endswith(eos) else eos) for r in rows]
        special = True
    enc = lambda texts: tokenizer(texts, add_special_tokens=special)["input_ids"]  # noqa: E731
    p_ids, c_ids, r_ids = enc(prompts), enc(chosen), enc(rejected)

    out = PairTokens(pair_id=[r["pair_id"] for r in rows], prompt=[], chosen=[], rejected=[])
    for p, c, r in zip(p_ids, c_ids, r_ids):
        n = min(common_prefix_length(p, c), common_prefix_length(p, r))
        tp, tc, tr = truncate(p[:n], c[n:], r[n:], max_length, max_prompt_length)
        out.n_truncated += (len(tp), len(tc), len(tr)) != (n, len(c) - n, len(r) - n)
        out.prompt.append(tp)
        out.chosen.append(tc)
        out.rejected.append(tr)
    if out.n_truncated and not quiet:
        log.info("truncated %d of %d pairs to max_length=%d (prompt keeps its end, responses their start)",
                 out.n_truncated, len(out), max_length)
    return out


def step_order(lengths: np.ndarray, step_pairs: int, seed: int, epoch: int,
               group_by_length: bool = True, group_steps: int = 50) -> np.ndarray:
    """Pair indices of each optimizer step of ``epoch``: (steps, step_pairs), a function of
    (seed, epoch) alone, so a resumed run replays exactly the batches an uninterrupted one sees.

    Pairs are shuffled; the last step is filled up with pairs from the start of the shuffle (as
    DistributedSampler pads), so every step holds ``step_pairs`` pairs. With ``group_by_length``,
    blocks of ``group_steps`` steps are sorted by length before being cut into steps (little
    padding), and the steps are shuffled again so long and short steps interleave.
    """
    rng = np.random.default_rng([seed, epoch])
    n = len(lengths)
    n_steps = math.ceil(n / step_pairs)
    perm = np.resize(rng.permutation(n), n_steps * step_pairs)
    if group_by_length:
        block = group_steps * step_pairs
        for start in range(0, len(perm), block):
            chunk = perm[start:start + block]
            perm[start:start + block] = chunk[np.argsort(-lengths[chunk], kind="stable")]
        steps = perm.reshape(n_steps, step_pairs)
        return steps[rng.permutation(n_steps)]
    return perm.reshape(n_steps, step_pairs)


def micro_batches(step: np.ndarray, lengths: np.ndarray, batch_size: int, num_processes: int,
                  process_index: int) -> list[np.ndarray]:
    """This process's micro-batches of one optimizer step (grad_accum of them, batch_size each).

    The step's pairs are sorted by length, so each micro-batch, and the batches the processes run
    side by side, hold pairs of similar length.
    """
    ordered = step[np.argsort(-lengths[step], kind="stable")]
    width = batch_size * num_processes
    return [ordered[i + process_index * batch_size:i + (process_index + 1) * batch_size]
            for i in range(0, len(ordered), width)]


def collate(tokens: PairTokens, idx, pad_id: int, ref: tuple[np.ndarray, np.ndarray] | None = None,
            pd_values: np.ndarray | None = None, pad_to_multiple_of: int = 1) -> dict:
    """A padded batch: rows [chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}] (as TRL stacks them).

    Returns input_ids and attention_mask (2B, T), response_mask (2B, T) with 1 on response tokens,
    and per pair (B,): ref_chosen / ref_rejected log-probs and pd when given.
    """
    import torch

    seqs = [tokens.prompt[i] + tokens.chosen[i] for i in idx] + [tokens.prompt[i] + tokens.rejected[i] for i in idx]
    resp_start = [len(tokens.prompt[i]) for i in idx] * 2
    width = max(len(s) for s in seqs)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (s, start) in enumerate(zip(seqs, resp_start)):
        input_ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        attention[row, :len(s)] = 1
        response[row, start:len(s)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention, "response_mask": response}
    return _with_pair_values(batch, idx, ref, pd_values)


def _with_pair_values(batch: dict, idx, ref, pd_values) -> dict:
    """Add the per-pair values of a batch (cached reference log-probs, PD for DFPO) to it."""
    import torch

    if ref is not None:
        batch["ref_chosen"] = torch.from_numpy(ref[0][idx])
        batch["ref_rejected"] = torch.from_numpy(ref[1][idx])
    if pd_values is not None:
        batch["pd"] = torch.from_numpy(pd_values[idx])
    return batch


def collate_packed(tokens: PairTokens, idx, pad_id: int, ref: tuple[np.ndarray, np.ndarray] | None = None,
                   pd_values: np.ndarray | None = None) -> dict:
    """A padding-free batch: the 2B sequences of ``collate`` (chosen rows, then rejected rows)
    concatenated into ONE row of input_ids (1, N), with position_ids (1, N) restarting at 0 at each
    sequence (so the model keeps attention within a sequence: FlashAttention 2's varlen kernel,
    or a block-diagonal causal mask with SDPA / eager; transformers builds either from the
    position_ids when no attention_mask is given), response_mask (1, N), seq_index (1, N) naming
    each token's sequence, and response_tokens (2B,). No token is padding."""
    import torch

    seqs = [tokens.prompt[i] + tokens.chosen[i] for i in idx] + [tokens.prompt[i] + tokens.rejected[i] for i in idx]
    resp_start = [len(tokens.prompt[i]) for i in idx] * 2
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)[None]
    positions = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    seq_index = torch.cat([torch.full((len(s),), j) for j, s in enumerate(seqs)])[None]
    response = (positions >= torch.tensor(resp_start)[seq_index]).long()
    batch = {"input_ids": ids, "position_ids": positions, "response_mask": response, "seq_index": seq_index,
             "response_tokens": torch.tensor([len(s) - st for s, st in zip(seqs, resp_start)])}
    return _with_pair_values(batch, idx, ref, pd_values)
