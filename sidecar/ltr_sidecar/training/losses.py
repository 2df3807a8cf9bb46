"""Ranking losses for output-length rankers (torch).

Scores follow the sidecar's convention: higher score = shorter predicted
output, so the ideal order of a list is ascending output length.
"""

from __future__ import annotations

import torch


def list_mle(scores: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ListMLE loss (Xia et al., ICML 2008), as used by Fu et al. 2024 (arXiv:2408.15792).

    The negative log-likelihood of the true order under the Plackett-Luce model
    of the scores: the shortest item is drawn first with probability
    softmax(scores), then the next shortest from the rest, and so on.

    Args:
        scores: float [lists, items]; higher = predicted shorter.
        lengths: [lists, items] true output lengths; the true order is ascending.
        mask: bool [lists, items], False for padding.  Padded items take no part
            (they are never drawn and never compete).  None = no padding.

    Returns:
        The loss averaged over lists, each list's log-likelihood divided by its
        number of real items so lists of different sizes weigh the same.

    Ties in length are broken at random on each call, so no tied order is learnt.
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    # Random tie-breaking: shuffle, then a stable sort by length.
    perm = torch.rand(scores.shape, device=scores.device).argsort(dim=-1)
    scores, lengths, mask = scores.gather(-1, perm), lengths.gather(-1, perm), mask.gather(-1, perm)
    # Padding sorts last so it is drawn after every real item and masked out.
    key = torch.where(mask, lengths.to(torch.float64), torch.inf)
    order = key.argsort(dim=-1, stable=True)
    s, m = scores.gather(-1, order), mask.gather(-1, order)
    s = s.masked_fill(~m, float("-inf"))
    # log sum_{j >= i} exp(s_j): a reversed cumulative logsumexp.
    tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
    nll = (tail - s).masked_fill(~m, 0.0).sum(-1)
    return (nll / m.sum(-1).clamp(min=1)).mean()


def pairwise_logistic(scores: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RankNet-style pairwise loss (Burges et al., ICML 2005), for comparison with ListMLE.

    For every pair (i, j) in a list with lengths[i] < lengths[j], the loss is
    log(1 + exp(-(s_i - s_j))): item i should score higher.  Tied pairs and
    padded items (mask False) take no part.

    Args and shapes as :func:`list_mle`; returns the mean over all counted pairs.
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    shorter = (lengths.unsqueeze(-1) < lengths.unsqueeze(-2)) & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    margin = scores.unsqueeze(-1) - scores.unsqueeze(-2)
    losses = torch.nn.functional.softplus(-margin)
    return (losses * shorter).sum() / shorter.sum().clamp(min=1)


LOSSES = {"listmle": list_mle, "pairwise": pairwise_logistic}
