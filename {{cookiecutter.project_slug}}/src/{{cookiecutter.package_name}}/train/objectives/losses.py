"""The pair losses (sigmoid DPO, IPO, SimPO, ORPO): model/pair_losses.py, where `evaluate` reads
the same rewards for held-out pairs."""

from ...model.pair_losses import LOSSES, REFERENCE_FREE, ipo, orpo, sigmoid, simpo

__all__ = ["LOSSES", "REFERENCE_FREE", "ipo", "orpo", "sigmoid", "simpo"]
