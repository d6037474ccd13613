"""A model factory no edge allowed: the trust tests check that it is never imported (importing it
would be enough to run code of an attacker's choosing)."""

from torch import nn

IMPORTED = True


def evil(**kwargs: object) -> nn.Module:
    return nn.Linear(1, 1)
