"""A pair's verdict: the rung's reply against the teacher's, read from the judge's two answers
(the teacher's reply shown first, then the rung's), against the run's own noise scale.

With the label probabilities of both orders:

- ``a1 = ln(P(A) / P(B))`` with the teacher's reply first, ``a2`` the same with the rung's first;
  ``q = (a2 - a1) / 2`` is the rung's advantage in log-odds, in which a pull toward one position
  cancels (Wang et al. 2023's balanced position calibration, on the log-odds);
- the noise scale, label-free: ``B`` is the mean of ``ln(P(A) / P(B))`` over every pair verdict
  of the run (the judge's average pull toward reply A), and ``sigma`` the standard deviation of
  ``(a1 + a2) / 2 - B`` over the distinct pairs whose two replies differ. The order-averaged pull
  ``(a1 + a2) / 2`` carries the same noise as ``q`` and none of the replies' difference, so its
  spread is how far ``q`` moves when nothing separates the replies;
- the win credit ``w = Phi(q / sigma)``: 0.5 for a pair the judge cannot tell apart, toward 1 or 0
  as the preference grows past the noise. ``judge_retention = 2 * mean(w)``: a win rate against
  the teacher over parity's 0.5, 1 in expectation for a rung exactly as good as the teacher;
- a discrete label for counts and calibration: a tie when ``|q| <= sigma``, else win or loss.

With labels alone (an endpoint without logprobs), MT-Bench's rule: a win in both orders is a win
(w = 1), a verdict that flips with the order a tie (0.5), a loss in both a loss (0). An unscored
pair (the judge named no label in either order) gets 0: never a win.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

# what a rung's reply is to the teacher's, from the label of each order
IN_ORDER = {"A": "loss", "B": "win", "C": "tie"}  # the teacher shown first (A), the rung second
SWAPPED = {"A": "win", "B": "loss", "C": "tie"}
CREDIT = {"win": 1.0, "tie": 0.5, "loss": 0.0, "unscored": 0.0}
P_MIN = 1e-6  # verdict probabilities are stored to 6 decimals: a 0 is read as the smallest stored
# fewer distinct pairs than this, or no spread among them (a scripted or fully certain judge):
# sigma is SIGMA_FLOOR, a preference of 2:1 odds averaged over both orders
MIN_PAIRS = 8
SIGMA_FLOOR = math.log(2)


def log_odds(v: dict[str, Any] | None) -> float | None:
    """``ln(P(A) / P(B))`` of one verdict; None when it has no label probabilities."""
    if not v or v.get("label") is None or not v.get("probs"):
        return None
    p = v["probs"]
    return math.log(max(p.get("A") or 0.0, P_MIN) / max(p.get("B") or 0.0, P_MIN))


def noise_scale(pairs: dict[tuple[str, str], tuple[dict | None, dict | None]]) -> dict[str, Any]:
    """The run's position bias ``B`` and noise scale ``sigma`` from its pair verdicts.

    ``pairs``: (in-order question key, swapped question key) → the two verdicts, once per distinct
    pair of replies across every rung (two rungs with the same reply share one). A pair whose two
    replies are identical is one question (both keys equal): it counts toward ``B``, not ``sigma``.
    """
    unique: dict[str, dict | None] = {}
    for (k1, k2), (v1, v2) in pairs.items():
        unique[k1], unique[k2] = v1, v2
    odds = [x for x in map(log_odds, unique.values()) if x is not None]
    if not odds:  # labels alone: no scale to read
        return {"position_bias": None, "sigma": None, "sigma_pairs": 0, "sigma_source": None}
    bias = statistics.fmean(odds)
    resid = []
    for (k1, k2), (v1, v2) in pairs.items():
        a1, a2 = log_odds(v1), log_odds(v2)
        if k1 != k2 and a1 is not None and a2 is not None:
            resid.append((a1 + a2) / 2 - bias)
    sd = statistics.stdev(resid) if len(resid) >= 2 else 0.0
    estimated = len(resid) >= MIN_PAIRS and sd > 1e-6
    return {"position_bias": round(bias, 6), "sigma": round(sd if estimated else SIGMA_FLOOR, 6),
            "sigma_pairs": len(resid), "sigma_source": "run" if estimated else "floor"}


def outcome(v1: dict | None, v2: dict | None, sigma: float | None) -> dict[str, Any]:
    """One pair's verdict from its in-order (teacher first) and swapped (rung first) verdicts:
    ``label`` (win | tie | loss | unscored), the win credit ``w``, ``consistent`` (whether the
    two orders' labels agree; None when either is unscored), and ``a1``, ``a2``, ``q`` where the
    label probabilities were read (None otherwise)."""
    out: dict[str, Any] = {"label": "unscored", "w": 0.0, "consistent": None, "a1": None, "a2": None, "q": None}
    if not v1 or not v2 or v1.get("label") is None or v2.get("label") is None:
        return out
    a, b = IN_ORDER[v1["label"]], SWAPPED[v2["label"]]
    out["consistent"] = a == b
    a1, a2 = log_odds(v1), log_odds(v2)
    if a1 is None or a2 is None or not sigma:
        out["label"] = a if a == b else "tie"
        out["w"] = CREDIT[out["label"]]
        return out
    from scipy.stats import norm

    q = (a2 - a1) / 2
    out.update(label="tie" if abs(q) <= sigma else ("win" if q > 0 else "loss"),
               w=float(norm.cdf(q / sigma)), a1=a1, a2=a2, q=q)
    return out
