"""BG/NBD and Gamma-Gamma, fitted by maximum likelihood with scipy (no database here).

* **BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy
  way"): while alive a customer buys at a Poisson rate λ ~ Gamma(r, alpha) and
  after each purchase drops out with probability p ~ Beta(a, b).  The input
  per customer is ``x`` (repeat purchases), ``t_x`` (time of the last purchase
  since the first) and ``T`` (time since the first purchase), in one time
  unit (days for ecrm's data, weeks for the CDNOW sample).
* **Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV"): the value of a
  customer's transactions varies around their mean, which varies across
  customers; fitted on repeat buyers with ``x`` and the mean value ``m``.

Fitting minimises the negative log-likelihood over the logarithms of the
parameters (so they stay positive) with ``scipy.optimize.minimize``
(L-BFGS-B within bounds; Nelder-Mead if that fails), on customers grouped by identical input
(weights), which makes a fit on 100,000 customers take well under a second
per model.  A fit that does not converge, or data that cannot identify the
model, raises :class:`FitError` with the data's statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from attrs import frozen
from ecrm_core.errors import EcrmError

__all__ = ["BgNbd", "FitError", "GammaGamma", "fit_bgnbd", "fit_gamma_gamma"]


class FitError(EcrmError):
    """A model could not be fitted; ``stats`` describes the data it was given."""

    def __init__(self, model: str, problem: str, stats: Mapping[str, Any]) -> None:
        self.model, self.problem, self.stats = model, problem, dict(stats)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.stats.items())
        super().__init__(f"{model} fit failed: {problem} (data: {shown})")


def _stats(**arrays: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, a in arrays.items():
        if name == "x":
            out["customers"] = int(a.size)
            out["repeat_buyers"] = int((a > 0).sum())
        if a.size:
            out[f"mean_{name}"] = float(np.mean(a))
            out[f"max_{name}"] = float(np.max(a))
    return out


def _compress(*cols: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    stacked = np.column_stack(cols)
    uniq, counts = np.unique(stacked, axis=0, return_counts=True)
    return [uniq[:, i] for i in range(uniq.shape[1])], counts.astype(float)


#: Parameters are searched within exp(-LOG_BOUND) .. exp(LOG_BOUND); a parameter at the bound means the
#: data pushes the model to a limit (e.g. b at its maximum: almost no drop-out observed), which is kept.
LOG_BOUND = 14.0


def _minimize(nll: Any, start: np.ndarray, model: str, stats: Mapping[str, Any]) -> tuple[np.ndarray, float, int, bool]:
    from scipy.optimize import minimize

    bounds = [(-LOG_BOUND, LOG_BOUND)] * len(start)
    with np.errstate(all="ignore"):
        # L-BFGS-B first (a few hundred likelihood evaluations); Nelder-Mead only to rescue a failed run
        first = minimize(
            nll, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 1000, "ftol": 1e-13}
        )
        if not first.success and np.isfinite(first.fun):  # a line search that stalled: restart from there once
            first = minimize(
                nll, first.x, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 1000, "ftol": 1e-13}
            )
        if first.success and np.isfinite(first.fun):
            second = first
        else:
            second = minimize(
                lambda p: nll(p)[0], first.x if np.all(np.isfinite(first.x)) else start, method="Nelder-Mead",
                bounds=bounds,
                options={"maxiter": 1500, "xatol": 1e-7, "fatol": 1e-10},
            )  # fmt: skip
    best = second if np.isfinite(second.fun) and second.fun <= first.fun else first
    if not np.isfinite(best.fun) or not np.all(np.isfinite(best.x)):
        raise FitError(model, "the likelihood did not converge to finite parameters", stats)
    # A flat likelihood (little data) may stop an optimiser on its iteration limit: the best finite point
    # is kept and flagged (``converged=False``), not refused.
    return np.exp(best.x), float(best.fun), int(first.nit + second.nit), bool(first.success or second.success)


@frozen
class BgNbd:
    """A fitted BG/NBD model (parameters ``r``, ``alpha``, ``a``, ``b``)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = 0.0
    customers: int = 0
    iterations: int = 0
    converged: bool = True

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b,
            "log_likelihood": self.log_likelihood, "customers": self.customers, "converged": self.converged,
        }  # fmt: skip

    def p_alive(self, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Probability that each customer is still alive at ``T``."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(all="ignore"):
            log_div = (r + x) * np.log((alpha + T) / (alpha + t_x)) + np.log(a / (b + np.maximum(x, 1) - 1))
            p = np.where(x == 0, 1.0, 1.0 / (1.0 + np.exp(np.minimum(log_div, 700))))
        return np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0)

    def expected_purchases(self, t: float, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Expected purchases of each customer in the next ``t`` time units."""
        from scipy.special import hyp2f1

        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(all="ignore"):
            first = (a + b + x - 1) / (a - 1)
            z = t / (alpha + T + t)
            second = hyp2f1(r + x, b + x, a + b + x - 1, z)
            third = np.exp((r + x) * np.log((alpha + T) / (alpha + T + t)))
            numerator = first * (1 - second * third)
            denominator = 1 + (x > 0) * (a / (b + x - 1)) * np.exp((r + x) * np.log((alpha + T) / (alpha + t_x)))
            out = numerator / denominator
        bad = ~np.isfinite(out) | (out < 0)
        if bad.any():
            # hyp2f1 loses precision for extreme inputs: fall back to rate x p_alive x t (an upper-bound style estimate)
            rate = (r + x) / (alpha + T)
            out = np.where(bad, rate * self.p_alive(x, t_x, T) * t, out)
        return np.nan_to_num(out, nan=0.0, posinf=0.0)

    def expected_population(self, t: Any) -> np.ndarray:
        """Expected purchases of a new customer in ``t`` time units (the unconditional curve)."""
        from scipy.special import hyp2f1

        t = np.asarray(t, dtype=float)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(all="ignore"):
            out = (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, t / (alpha + t)))
        return np.nan_to_num(out, nan=0.0, posinf=0.0)


def _bgnbd_nll(
    params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, w: np.ndarray
) -> tuple[float, np.ndarray]:
    """The mean negative log-likelihood and its gradient in the log-parameters (analytic: one evaluation
    per optimiser step instead of five)."""
    from scipy.special import digamma, gammaln

    r, alpha, a, b = np.exp(params)
    rx = r + x
    log_aT, log_atx = np.log(alpha + T), np.log(alpha + t_x)
    a1 = gammaln(rx) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -rx * log_aT
    buyer = x > 0
    bx1 = np.where(buyer, b + x - 1, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(buyer, np.log(a) - np.log(bx1) - rx * log_atx, -np.inf)
    tail = np.logaddexp(a3, a4)
    ll = a1 + a2 + tail
    total_w = w.sum()
    value = -float(np.dot(w, ll)) / total_w
    if not math.isfinite(value):
        return math.inf, np.zeros(4)
    w3, w4 = np.exp(a3 - tail), np.where(buyer, np.exp(a4 - tail), 0.0)
    d_r = digamma(rx) - digamma(r) + np.log(alpha) - w3 * log_aT - w4 * log_atx
    d_alpha = r / alpha - w3 * rx / (alpha + T) - w4 * rx / (alpha + t_x)
    d_a = digamma(a + b) - digamma(a + b + x) + w4 / a
    d_b = digamma(a + b) + digamma(b + x) - digamma(b) - digamma(a + b + x) - w4 / bx1
    grad = np.array([r * np.dot(w, d_r), alpha * np.dot(w, d_alpha), a * np.dot(w, d_a), b * np.dot(w, d_b)])
    return value, -grad / total_w


def fit_bgnbd(x: Any, t_x: Any, T: Any) -> BgNbd:
    """Fit BG/NBD to repeat purchases ``x``, last-purchase times ``t_x`` and ages ``T``."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    stats = _stats(x=x, t_x=t_x, T=T)
    if x.size == 0:
        raise FitError("BG/NBD", "no customers", stats)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t_x)) and np.all(np.isfinite(T))):
        raise FitError("BG/NBD", "the data holds NaN or infinite values", stats)
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T + 1e-9) or np.any(T <= 0):
        raise FitError("BG/NBD", "needs x >= 0 and 0 <= t_x <= T with T > 0", stats)
    if not np.any(x > 0):
        raise FitError("BG/NBD", "no customer bought twice: repeat behaviour cannot be estimated", stats)
    (cx, ct, cT), w = _compress(x, t_x, T)
    scale = float(np.mean(T))
    start = np.log([1.0, max(scale, 1e-3), 1.0, 1.0])
    params, nll, nit, ok = _minimize(lambda p: _bgnbd_nll(p, cx, ct, cT, w), start, "BG/NBD", stats)
    r, alpha, a, b = (float(v) for v in params)
    return BgNbd(
        r, alpha, a, b, log_likelihood=-nll * float(w.sum()), customers=int(x.size), iterations=nit, converged=ok
    )


@frozen
class GammaGamma:
    """A fitted Gamma-Gamma spend model (parameters ``p``, ``q``, ``v`` (gamma))."""

    p: float
    q: float
    v: float
    log_likelihood: float = 0.0
    customers: int = 0
    iterations: int = 0
    converged: bool = True

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "p": self.p,
            "q": self.q,
            "v": self.v,
            "log_likelihood": self.log_likelihood,
            "customers": self.customers,
            "converged": self.converged,
        }

    @property
    def population_mean(self) -> float:
        """The expected transaction value of a customer with no repeat purchases (needs q > 1)."""
        return self.p * self.v / (self.q - 1) if self.q > 1 else math.nan

    def expected_value(self, x: Any, m: Any) -> np.ndarray:
        """Expected average transaction value of each customer (the population mean for ``x`` = 0)."""
        x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
        p, q, v = self.p, self.q, self.v
        with np.errstate(all="ignore"):
            out = np.where(x > 0, p * (v + x * m) / (p * x + q - 1), self.population_mean)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _gg_nll(params: np.ndarray, x: np.ndarray, m: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """The mean negative log-likelihood of Gamma-Gamma and its gradient in the log-parameters."""
    from scipy.special import digamma, gammaln

    p, q, v = np.exp(params)
    px = p * x
    log_m, log_x, log_xmv = np.log(m), np.log(x), np.log(x * m + v)
    ll = gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v) + (px - 1) * log_m + px * log_x
    ll -= (px + q) * log_xmv
    total_w = w.sum()
    value = -float(np.dot(w, ll)) / total_w
    if not math.isfinite(value):
        return math.inf, np.zeros(3)
    psi = digamma(px + q)
    d_p = x * (psi - digamma(px) + log_m + log_x - log_xmv)
    d_q = psi - digamma(q) + np.log(v) - log_xmv
    d_v = q / v - (px + q) / (x * m + v)
    grad = np.array([p * np.dot(w, d_p), q * np.dot(w, d_q), v * np.dot(w, d_v)])
    return value, -grad / total_w


def fit_gamma_gamma(x: Any, m: Any) -> GammaGamma:
    """Fit Gamma-Gamma to repeat buyers: ``x`` > 0 repeat purchases with mean value ``m`` > 0."""
    x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
    stats = _stats(x=x, m=m)
    keep = (x > 0) & (m > 0) & np.isfinite(m)
    if keep.sum() < 2:
        raise FitError("Gamma-Gamma", "fewer than two repeat buyers with a positive order value", stats)
    x, m = x[keep], m[keep]
    if np.ptp(m) == 0:
        raise FitError("Gamma-Gamma", "every repeat buyer has the same order value: spread cannot be estimated", stats)
    (cx, cm), w = _compress(x, m)
    start = np.log([1.0, 1.0, max(float(np.mean(m)), 1e-3)])
    params, nll, nit, ok = _minimize(lambda p: _gg_nll(p, cx, cm, w), start, "Gamma-Gamma", stats)
    p, q, v = (float(val) for val in params)
    if q <= 1:
        raise FitError("Gamma-Gamma", f"q = {q:.3g} <= 1: the mean order value is not defined", stats)
    return GammaGamma(
        p, q, v, log_likelihood=-nll * float(w.sum()), customers=int(x.size), iterations=nit, converged=ok
    )
