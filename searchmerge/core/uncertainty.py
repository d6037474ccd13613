"""How sure a measured accuracy is: its sample count and a confidence interval.

A ratio of 0.95 measured on 40 validation images and one measured on 4,000 are different
claims; every report of a baseline or a ratio therefore says how many samples it was
measured on and gives an interval. One implementation serves the evaluator, the report,
the dashboard's attributes, the drift checks and the service, so no two disagree.

* An accuracy is a proportion of samples right, so its interval is Wilson's score
  interval (no continuity correction; good at small counts and near 0 or 1, where the
  normal approximation is not). A ratio's interval is its accuracy's interval over the
  baseline's measured value: the target is a share of that measured baseline, so the
  baseline is the fixed reference the ratio is judged against (its own interval is
  reported beside it).
* A metric that is not a proportion of samples (mAP) gets no Wilson interval; its task
  kind says so (``TaskKind.proportion``). Where the kind can score each sample's share of it
  again (``TaskKind.metric_interval``: a detector's mAP over resampled images), its interval is
  a percentile :func:`bootstrap`; otherwise it is reported with its count only.
* A model whose weights are still its original's, scored on its baseline's data, has a
  ratio of exactly 1 (the same predictions on the same samples): its interval is ``[1, 1]``.

Example:
    >>> interval = wilson(0.9, 100)
    >>> round(interval.low, 3), round(interval.high, 3), interval.samples
    (0.826, 0.945, 100)
    >>> interval.describe()
    '95% CI [0.826, 0.945], n=100, Wilson'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["BOOTSTRAP_RESAMPLES", "CONFIDENCE", "Interval", "bootstrap", "exact", "wilson"]

#: The two-sided confidence of every interval reported, unless a caller asks for another.
CONFIDENCE = 0.95
#: Resamples of a bootstrap interval: enough for the 2.5th and 97.5th percentiles to settle to
#: about a hundredth of a ratio, few enough that a detector's mAP is recomputed in seconds.
BOOTSTRAP_RESAMPLES = 200


@dataclass(frozen=True)
class Interval:
    """A value's confidence interval, with what it was measured on and how it was computed."""

    low: float
    high: float
    samples: int
    #: ``wilson``, ``bootstrap``, or ``exact`` (nothing to estimate: an unchanged model on its own data).
    method: str
    confidence: float = CONFIDENCE

    def scaled(self, by: float) -> Interval:
        """This interval divided by ``by`` (an accuracy's interval as a ratio to its baseline)."""
        if by <= 0:
            return Interval(0.0, 0.0, self.samples, self.method, self.confidence)
        return Interval(self.low / by, self.high / by, self.samples, self.method, self.confidence)

    def describe(self) -> str:
        """``95% CI [0.826, 0.945], n=100, Wilson``: every number says what it is."""
        method = "Wilson" if self.method == "wilson" else self.method
        return f"{self.confidence:.0%} CI [{self.low:.3f}, {self.high:.3f}], n={self.samples}, {method}"

    def to_dict(self) -> dict[str, float | int | str]:
        return {"low": self.low, "high": self.high, "samples": self.samples, "method": self.method,
                "confidence": self.confidence}


def wilson(proportion: float, samples: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson's score interval of a proportion measured on ``samples`` samples.

    ``proportion`` may be any value in [0, 1] (an accuracy already divided by its count);
    with no samples the interval is ``[0, 1]``: nothing is known.
    """
    if samples <= 0:
        return Interval(0.0, 1.0, 0, "wilson", confidence)
    p = min(1.0, max(0.0, proportion))
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2n = z * z / samples
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / samples + z2n / (4 * samples))
    return Interval(max(0.0, centre - half), min(1.0, centre + half), samples, "wilson", confidence)


def bootstrap(
    statistic: Callable[[np.ndarray], float], samples: int, *, resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE, seed: int = 0,
) -> Interval:
    """The percentile bootstrap interval of a statistic of ``samples`` items.

    ``statistic`` is given the indices of a resample (drawn with replacement, ``samples`` of
    them) and returns the statistic of those items; ``seed`` makes the interval repeatable.

    Example:
        >>> values = np.array([0.0, 1.0] * 50)
        >>> interval = bootstrap(lambda index: float(values[index].mean()), 100)
        >>> interval.low < 0.5 < interval.high, interval.method
        (True, 'bootstrap')
    """
    if samples <= 0:
        return Interval(0.0, 0.0, 0, "bootstrap", confidence)
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, samples, samples)) for _ in range(resamples)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return Interval(float(low), float(high), samples, "bootstrap", confidence)


def exact(value: float, samples: int, confidence: float = CONFIDENCE) -> Interval:
    """A value with nothing to estimate (an unchanged model's ratio on its own data): ``[value, value]``."""
    return Interval(value, value, samples, "exact", confidence)
