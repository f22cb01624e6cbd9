"""The pair losses, per pair, from sequence log-probabilities: pure functions, no model.

Inputs per pair: the policy's summed log-probabilities of the chosen and rejected answers
(`chosen`, `rejected`), the reference's (`ref_chosen`, `ref_rejected`; None for the
reference-free losses) and each answer's trained tokens (`n_chosen`, `n_rejected`).

  sigmoid  DPO: -log sigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))
  ipo      IPO, on log-ratios averaged per token (as its authors and TRL compute it):
           (d_chosen / n_chosen - d_rejected / n_rejected - 1 / (2 beta))^2
  simpo    SimPO, no reference: -log sigmoid(beta * (chosen / n_chosen - rejected / n_rejected) - gamma)
  orpo     ORPO, no reference: the chosen answer's mean NLL + beta * -log sigmoid(log odds ratio), the
           odds of each answer from its mean per-token log-probability p: log(e^p / (1 - e^p))

Each returns (loss per pair, chosen reward, rejected reward); the rewards are what the loss
pushes apart (beta times the log-ratio, or the scaled mean log-probability), for logging:
reward margin and preference accuracy (chosen reward above rejected). Here, not in train,
because `evaluate` reports the same rewards on held-out pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REFERENCE_FREE = ("simpo", "orpo")


def sigmoid(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected, beta: float, gamma: float):
    reward_chosen, reward_rejected = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    return -F.logsigmoid(reward_chosen - reward_rejected), reward_chosen, reward_rejected


def ipo(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected, beta: float, gamma: float):
    ratio_chosen, ratio_rejected = (chosen - ref_chosen) / n_chosen, (rejected - ref_rejected) / n_rejected
    return (ratio_chosen - ratio_rejected - 1 / (2 * beta)) ** 2, beta * ratio_chosen, beta * ratio_rejected


def simpo(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected, beta: float, gamma: float):
    reward_chosen, reward_rejected = beta * chosen / n_chosen, beta * rejected / n_rejected
    return -F.logsigmoid(reward_chosen - reward_rejected - gamma), reward_chosen, reward_rejected


def _log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    # log(p / (1 - p)) with log p = mean_logp < 0; log1p(-exp(x)) stays finite as x -> 0- only up to
    # float precision, so clamp just below 0.
    mean_logp = mean_logp.clamp(max=-1e-6)
    return mean_logp - torch.log1p(-torch.exp(mean_logp))


def orpo(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected, beta: float, gamma: float):
    mean_chosen, mean_rejected = chosen / n_chosen, rejected / n_rejected
    odds_ratio = _log_odds(mean_chosen) - _log_odds(mean_rejected)
    return -mean_chosen - beta * F.logsigmoid(odds_ratio), beta * mean_chosen, beta * mean_rejected


LOSSES = {"sigmoid": sigmoid, "ipo": ipo, "simpo": simpo, "orpo": orpo}
