"""Sequences for evaluation: padded prompt+response batches, seeded sampling, summed
log-probabilities, the per-token KL terms, and the small statistics the evaluator reports.

Shapes: a `Batch` holds `input_ids` / `attention_mask` of shape (B, T) and a `response_mask` (B, T)
that is 1 on response tokens; `sequence_logps` returns (B,) summed log-probabilities (nats) of the
response tokens. Sampling is seeded per prompt (`prompt_seed`), so samples do not depend on the
batch size (see `alignsweep.evaluate.evaluator` for the metric definitions).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch


@dataclass
class Batch:
    """Prompts (left-padded) followed by responses (right-padded), one row per sequence."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor  # 1 on response tokens (those scored)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)


def make_batch(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int) -> Batch:
    p_len = max(len(p) for p in prompt_ids)
    r_len = max(len(r) for r in response_ids)
    rows, attn, resp = [], [], []
    for p, r in zip(prompt_ids, response_ids, strict=True):
        left, right = p_len - len(p), r_len - len(r)
        rows.append([pad_id] * left + list(p) + list(r) + [pad_id] * right)
        attn.append([0] * left + [1] * (len(p) + len(r)) + [0] * right)
        resp.append([0] * p_len + [1] * len(r) + [0] * right)
    return Batch(torch.tensor(rows), torch.tensor(attn), torch.tensor(resp))


@torch.no_grad()
def sequence_logps(model: Any, batch: Batch) -> torch.Tensor:
    """Summed log-probability of each row's response tokens under `model`."""
    device = next(model.parameters()).device
    ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)
    position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids, use_cache=False).logits
    logps = torch.log_softmax(logits[:, :-1], dim=-1, dtype=torch.float32)
    del logits
    token_logps = logps.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token_logps * batch.response_mask[:, 1:].to(device)).sum(dim=1).cpu()


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt `index`'s draws in the evaluation seeded `seed` (63 bits): a prompt's
    sample depends on its index, never on the batch it is generated in."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def accepts_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def sample(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    first_index: int = 0,
    sync: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> list[list[int]]:
    """One response per prompt, from the untruncated distribution at `temperature`; each ends with
    EOS unless it ran out of tokens.

    Row i draws its tokens from its own generator seeded `prompt_seed(seed, first_index + i)`, by
    inverting the cumulative distribution (float64) at one uniform draw per token, so its sample
    does not depend on the other rows of the batch. `sync` (sharded evaluation) replaces each
    step's tokens by rank 0's, so that every rank takes the same path."""
    device = next(model.parameters()).device
    batch = make_batch(prompt_ids, [[] for _ in prompt_ids], pad_id)
    generators = [
        torch.Generator(device="cpu").manual_seed(prompt_seed(seed, first_index + i)) for i in range(len(prompt_ids))
    ]
    ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)
    out = [[] for _ in prompt_ids]
    done = torch.zeros(len(prompt_ids), dtype=torch.bool)
    past = None
    position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)
    step_ids = ids
    last_only = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    for _ in range(max_new_tokens):
        result = model(
            input_ids=step_ids, attention_mask=attn, position_ids=position_ids, past_key_values=past, use_cache=True,
            **last_only,
        )
        past = result.past_key_values
        cdf = torch.softmax(result.logits[:, -1].double() / temperature, dim=-1).cumsum_(dim=-1)
        del result
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(device)
        # the first token whose cumulative probability exceeds u * total: token k with probability p_k
        nxt = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        nxt = nxt.clamp_(max=cdf.shape[1] - 1).cpu()
        del cdf
        if sync is not None:
            nxt = sync(nxt)
        for i, tok in enumerate(nxt.tolist()):
            if not done[i]:
                out[i].append(tok)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        step_ids = nxt.unsqueeze(1).to(device)
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        position_ids = position_ids[:, -1:] + 1
    return out


@torch.no_grad()
def sequence_stats(policy: Any, ref: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: log pi(y|x), log pi_ref(y|x) and sum_t KL(pi(.|x,y_<t) || pi_ref(.|x,y_<t)) over
    the response positions (both models see the same batch; one forward pass each)."""
    mask = batch.response_mask[:, 1:]
    cols = mask.any(dim=0).nonzero()
    if len(cols) == 0:
        zeros = torch.zeros(batch.input_ids.shape[0])
        return zeros, zeros.clone(), zeros.clone()
    lo, hi = int(cols[0]), int(cols[-1]) + 1  # logits at column c predict token c + 1

    def log_probs(model: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        ids, attn = batch.input_ids[:, : hi + 1].to(device), batch.attention_mask[:, : hi + 1].to(device)
        position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids, use_cache=False).logits
        return torch.log_softmax(logits[:, lo:hi], dim=-1, dtype=torch.float32)

    lp = log_probs(policy)
    lq = log_probs(ref).to(lp.device)
    targets = batch.input_ids[:, lo + 1 : hi + 1].to(lp.device).unsqueeze(-1)
    m = mask[:, lo:hi].to(lp.device, lp.dtype)
    pol = (lp.gather(-1, targets).squeeze(-1) * m).sum(dim=1)
    refl = (lq.gather(-1, targets).squeeze(-1) * m).sum(dim=1)
    # sum_v p_v (log p_v - log q_v), a token of probability 0 contributing 0; in place, so the
    # batch holds four vocabulary-sized float32 tensors per scored position, not seven
    p = lp.exp()
    kl_terms = lp.sub_(lq)
    del lq
    kl_terms.mul_(p).masked_fill_(p == 0, 0.0)
    token_kl = kl_terms.sum(dim=-1)
    return pol.cpu(), refl.cpu(), (token_kl * m).sum(dim=1).cpu()


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def least_squares(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Slope and R^2 of the least-squares line of y on x.

    Undefined values are nan, never 0: with fewer than two distinct x (e.g. every sample cut at
    `max_new_tokens`: one length) neither exists; with constant y the slope is 0 and R^2 (0/0) is
    nan."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.size < 2:
        return math.nan, math.nan
    dx, dy = xs - xs.mean(), ys - ys.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    if sxx == 0:
        return math.nan, math.nan
    if syy == 0:
        return 0.0, math.nan
    return sxy / sxx, sxy * sxy / (sxx * syy)


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: Any):
    """`model` in evaluation mode inside the block, its own mode restored after (even on errors)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()
