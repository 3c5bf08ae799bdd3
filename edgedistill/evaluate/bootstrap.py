"""95% intervals for the retention ladder, by bootstrap over the eval examples (scipy.stats.bootstrap,
percentile method, a fixed seed so the same rows give the same interval).

- :func:`mean_ci`: the interval of one rung's score (the mean of its per-example scores);
- :func:`retention_ci`: the interval of ``mean(student) / mean(teacher)``, resampled *paired*: both
  were scored on the same examples, so an example drawn for one is drawn for the other, and what
  the two rungs share (an easy example, a hard one) cancels out of the ratio.

Degenerate cases are answered without resampling: fewer than two examples (no interval), scores
that are all equal (the interval is the point), a teacher that scored 0 (no retention). In a
resample where the teacher scored 0 the ratio is unbounded (1 when the student scored 0 too); a
bound that is not finite (that happened in more than 2.5% of the resamples) is ``None``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 0


def _bound(v: float) -> float | None:
    return round(float(v), 6) if math.isfinite(v) else None


def _bootstrap(data: tuple, statistic: Any, paired: bool, seed: int) -> tuple[float | None, float | None]:
    import numpy as np
    from scipy.stats import bootstrap

    n = len(data[0])
    with np.errstate(all="ignore"):  # inf ratios are expected; see retention_ci
        res = bootstrap(data, statistic, n_resamples=N_RESAMPLES, vectorized=True, paired=paired,
                        batch=max(1, int(2e7 // n)),  # resamples held at once: bounded memory
                        confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
    return _bound(res.confidence_interval.low), _bound(res.confidence_interval.high)


def mean_ci(scores: Sequence[float], *, seed: int = SEED) -> list[float | None] | None:
    """95% interval of the mean of ``scores``; None with fewer than two scores."""
    import numpy as np

    x = np.asarray(scores, dtype=np.float64)
    if x.size < 2:
        return None
    if np.ptp(x) == 0:  # every example scored the same: no spread to resample
        return [_bound(x[0]), _bound(x[0])]

    def mean(s, axis=-1):
        return s.mean(axis=axis)

    return list(_bootstrap((x,), mean, paired=False, seed=seed))


def retention_ci(student: Sequence[float], teacher: Sequence[float], *,
                 seed: int = SEED) -> list[float | None] | None:
    """Paired 95% interval of ``mean(student) / mean(teacher)`` over the same examples (same order);
    None with fewer than two examples or a teacher mean of 0."""
    import numpy as np

    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"paired scores differ in length: {s.size} student, {t.size} teacher")
    if s.size < 2 or t.mean() <= 0:
        return None
    if np.ptp(s) == 0 and np.ptp(t) == 0:  # both constant: every resample gives the same ratio
        r = _bound(s[0] / t[0])
        return [r, r]

    def ratio(ss, tt, axis=-1):
        # a resample where the teacher scored 0: unbounded retention, or 1 when the student
        # scored 0 as well (it kept all the teacher had)
        num, den = ss.mean(axis=axis), tt.mean(axis=axis)
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, 1.0))

    return list(_bootstrap((s, t), ratio, paired=True, seed=seed))


def rung_intervals(scores: dict[str, float], teacher: dict[str, float]) -> dict[str, Any]:
    """The interval fields of one ladder rung, from per-example scores keyed by example id:
    ``n`` (examples both rungs scored), ``score_ci95`` and ``retention_ci95``."""
    ids = [i for i in scores if i in teacher and scores[i] is not None and teacher[i] is not None]
    own = [scores[i] for i in scores if scores[i] is not None]
    return {"n": len(ids), "score_ci95": mean_ci(own),
            "retention_ci95": retention_ci([scores[i] for i in ids], [teacher[i] for i in ids])}
