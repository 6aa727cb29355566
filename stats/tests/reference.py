#!/usr/bin/env python3
"""Independent reference values for rto's `stats` crate, computed with numpy, scipy and statsmodels.

    reference.py make-inputs INPUTS.json          # write the fixed inputs (run once; the file is committed)
    reference.py compute INPUTS.json EXPECTED.json  # write what each statistic should be on those inputs

Nothing here calls or copies the Rust code's algorithms. Each value comes from a different route:

- Wilson intervals: statsmodels `proportion_confint(method="wilson")`.
- Standard errors: scipy `stats.sem` (ddof = 1).
- Win rate: AlpacaEval's `describe_head2head` on the 0..1 scale, with numpy and scipy.
- LC win rate: statsmodels `GLM(Binomial)` on AlpacaEval's duplicated soft-label rows (y = 1 weighted by p,
  y = 0 weighted by 1 - p, `freq_weights`), fitted by statsmodels' IRLS; prediction with the length term at 0.
- Bootstrap: SplitMix64 transcribed into Python integers with 64-bit masks draws the same cluster indices as the
  Rust side (the crate's documented procedure), the statistic is recomputed per replicate with the routes above
  (the LC model refitted by statsmodels), and the interval is `numpy.percentile(values, [2.5, 97.5])`.

Conventions the crate documents and this script states again, because no library defines them: a preference
that is not a number in [0, 1] is dropped; all preferences 1 (or 0) give LC = 1 (or 0); a fit statsmodels
reports as perfectly separated is undefined (null); with fewer than two items or a zero length deviation the
model has no length term; clusters are prompts in order of first appearance.

Non-finite numbers are written as the strings "inf" / "-inf"; undefined values as null.
"""

import json
import math
import sys
import warnings

import numpy as np
import scipy
import scipy.stats
import statsmodels
import statsmodels.api as sm
from statsmodels.stats.proportion import proportion_confint
from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

MASK = (1 << 64) - 1


class SplitMix64:
    """Vigna's splitmix64.c, and `below(n)` = the high word of next * n (Lemire), as the crate defines it."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return (self.next_u64() * n) >> 64


def valid(p):
    return p is not None and not math.isnan(p) and 0.0 <= p <= 1.0


def win_rate(prefs):
    kept = np.array([p for p in prefs if valid(p)], dtype=float)
    if kept.size == 0:
        return None
    n_wins = int((kept > 0.5).sum())
    n_losses = int((kept < 0.5).sum())
    n_draws = int((kept == 0.5).sum())
    # ZeroOneScoringRule: exact draws stay draws, the rest are rounded to a win or a loss.
    discrete = np.where(kept == 0.5, 0.5, np.round(kept))
    return {
        "discrete_win_rate": float(discrete.mean()),
        "n_draws": n_draws,
        "n_dropped": len(prefs) - int(kept.size),
        "n_losses": n_losses,
        "n_total": int(kept.size),
        "n_wins": n_wins,
        "standard_error": float(scipy.stats.sem(kept)) if kept.size >= 2 else None,
        "win_rate": float(kept.mean()),
    }


def lc_win_rate(prefs, len_a, len_b):
    keep = [i for i, p in enumerate(prefs) if valid(p)]
    if not keep:
        return None
    p = np.array([prefs[i] for i in keep], dtype=float)
    delta = np.array([len_b[i] - len_a[i] for i in keep], dtype=float)  # baseline minus model, as AlpacaEval
    n = p.size
    sd = float(np.std(delta, ddof=1)) if n >= 2 else None
    out = {"std_delta_len": sd, "phi": 0.0}
    if np.all(p == 0.0):
        return {**out, "value": 0.0, "theta": "-inf"}
    if np.all(p == 1.0):
        return {**out, "value": 1.0, "theta": "inf"}
    t = np.tanh(delta / sd) if sd is not None and sd > 0 else None
    if t is not None and np.ptp(t) == 0:
        t = None
    x = np.ones((n, 1)) if t is None else np.column_stack([np.ones(n), t])
    rows_x = np.vstack([x, x])
    rows_y = np.concatenate([np.ones(n), np.zeros(n)])
    rows_w = np.concatenate([p, 1.0 - p])
    rows = rows_w > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        try:
            model = sm.GLM(rows_y[rows], rows_x[rows], family=sm.families.Binomial(), freq_weights=rows_w[rows])
            fit = model.fit(tol=1e-13, maxiter=1000)
        except (PerfectSeparationWarning, PerfectSeparationError):
            return None
    params = np.asarray(fit.params)
    if not np.all(np.isfinite(params)):
        return None
    x_test = x.copy()
    if t is not None:
        x_test[:, 1] = 0.0  # AlpacaEval's df_test["std_delta_len"] = 0
    value = float(np.mean(fit.predict(x_test)))
    return {**out, "value": value, "theta": float(params[0]), "phi": float(params[1]) if t is not None else 0.0}


def clusters_by_key(keys):
    order, members = [], {}
    for i, k in enumerate(keys):
        if k not in members:
            members[k] = []
            order.append(k)
        members[k].append(i)
    return [members[k] for k in order]


def bootstrap(clusters, replicates, seed, statistic):
    rng = SplitMix64(seed)
    k = len(clusters)
    values = []
    for _ in range(replicates):
        idx = []
        for _ in range(k):
            idx.extend(clusters[rng.below(k)])
        values.append(statistic(idx))
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, len(values)
    lo, hi = np.percentile(np.array(finite), [2.5, 97.5])
    return [float(lo), float(hi)], len(values) - len(finite)


def compute_set(s):
    prefs = [math.nan if p is None else float(p) for p in s["prefs"]]
    len_a, len_b = s["len_a"], s["len_b"]
    out = {"name": s["name"], "win_rate": win_rate(prefs), "lc": lc_win_rate(prefs, len_a, len_b), "bootstrap": None}
    boot = s.get("bootstrap")
    if boot:
        clusters = clusters_by_key(s["prompts"])

        def wr(idx):
            w = win_rate([prefs[i] for i in idx])
            return math.nan if w is None else w["win_rate"]

        def lc(idx):
            r = lc_win_rate([prefs[i] for i in idx], [len_a[i] for i in idx], [len_b[i] for i in idx])
            return math.nan if r is None else r["value"]

        b = {}
        b["win_rate"], b["win_rate_undefined"] = bootstrap(clusters, boot["replicates"], boot["seed"], wr)
        if boot.get("lc"):
            b["lc"], b["lc_undefined"] = bootstrap(clusters, boot["replicates"], boot["seed"], lc)
        out["bootstrap"] = b
    return out


def compute(inputs):
    wilson = []
    for k, n in inputs["wilson"]:
        if n == 0 or k > n:
            wilson.append(None)
        else:
            lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
            wilson.append([float(lo), float(hi)])
    sem = [float(scipy.stats.sem(v)) if len(v) >= 2 else None for v in inputs["sem"]]
    return {
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "statsmodels": statsmodels.__version__},
        "wilson": wilson,
        "sem": sem,
        "sets": [compute_set(s) for s in inputs["sets"]],
    }


def make_inputs():
    """Fixed hand-written sets, and an AlpacaEval-sized random one (805 prompts, both orders)."""
    sets = [
        {
            "name": "soft-pairs",
            "prefs": [0.91, 0.72, 0.35, 0.48, 0.66, 0.81, 0.12, 0.3, 0.55, 0.61, 0.97, 0.88],
            "len_a": [820, 820, 150, 150, 640, 640, 90, 90, 400, 400, 1500, 1500],
            "len_b": [500, 500, 420, 420, 510, 510, 380, 380, 390, 390, 600, 600],
            "prompts": ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4", "p5", "p5", "p6", "p6"],
            "bootstrap": {"replicates": 2000, "seed": 20240805, "lc": True},
        },
        {
            "name": "ties-and-draws",
            "prefs": [1, 0.5, 0, 0.5, 1, 1, 0, 0.5, 1, 0, 0.5, 0.5, 1, 0, 1, 0.5],
            "len_a": [300, 200, 150, 220, 90, 410, 330, 205, 600, 80, 210, 199, 150, 700, 260, 240],
            "len_b": [250, 210, 180, 210, 120, 300, 310, 200, 350, 90, 215, 200, 140, 400, 250, 230],
            "prompts": [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8],
            "bootstrap": {"replicates": 2000, "seed": 7, "lc": False},
        },
        {
            "name": "equal-lengths",
            "prefs": [0.2, 0.9, 0.7, 0.5, 0.65],
            "len_a": [100, 100, 100, 100, 100],
            "len_b": [100, 100, 100, 100, 100],
            "prompts": ["a", "b", "c", "d", "e"],
            "bootstrap": {"replicates": 2000, "seed": 3, "lc": True},
        },
        {
            "name": "dropped-preferences",
            "prefs": [0.8, None, 0.25, 1.3, 0.6, -0.1, 0.45, 0.9],
            "len_a": [210, 50, 90, 300, 180, 20, 120, 400],
            "len_b": [150, 60, 140, 100, 170, 30, 160, 220],
            "prompts": ["a", "a", "b", "b", "c", "c", "d", "d"],
            "bootstrap": None,
        },
        {
            "name": "all-wins",
            "prefs": [1, 1, 1, 1],
            "len_a": [100, 300, 50, 220],
            "len_b": [120, 100, 80, 200],
            "prompts": [1, 2, 3, 4],
            "bootstrap": None,
        },
        {
            "name": "separated-by-length",
            "prefs": [1, 1, 0, 0, 1, 0],
            "len_a": [500, 640, 100, 90, 720, 150],
            "len_b": [300, 300, 300, 300, 300, 300],
            "prompts": [1, 2, 3, 4, 5, 6],
            "bootstrap": None,
        },
        {
            "name": "single",
            "prefs": [0.7],
            "len_a": [10],
            "len_b": [20],
            "prompts": [1],
            "bootstrap": {"replicates": 2000, "seed": 1, "lc": True},
        },
        {"name": "empty", "prefs": [], "len_a": [], "len_b": [], "prompts": [], "bootstrap": None},
    ]

    rng = np.random.default_rng(805)
    n_prompts = 805
    len_b = np.maximum(1, np.round(rng.lognormal(7.0, 0.5, n_prompts))).astype(int)
    len_a = np.maximum(1, np.round(rng.lognormal(7.2, 0.6, n_prompts))).astype(int)
    quality = rng.normal(0.2, 1.0, n_prompts)
    prefs, la, lb, prompts = [], [], [], []
    for i in range(n_prompts):
        for position_bias in (0.3, -0.3):  # both orders of one prompt, judged with a position bias
            eta = quality[i] + position_bias + 0.9 * np.tanh((len_a[i] - len_b[i]) / 800.0)
            eta += rng.normal(0.0, 0.5)
            p = round(float(1.0 / (1.0 + np.exp(-eta))), 6)
            u = rng.random()
            if u < 0.03:
                p = 0.5
            elif u < 0.05:
                p = 1.0
            elif u < 0.07:
                p = 0.0
            prefs.append(p)
            la.append(int(len_a[i]))
            lb.append(int(len_b[i]))
            prompts.append(f"alpaca-{i:03d}")
    sets.append(
        {
            "name": "alpaca-805",
            "prefs": prefs,
            "len_a": la,
            "len_b": lb,
            "prompts": prompts,
            "bootstrap": {"replicates": 2000, "seed": 42, "lc": True},
        }
    )
    wilson = [[0, 10], [10, 10], [3, 10], [1, 1], [0, 1], [57, 805], [400, 805], [1, 450], [449, 450], [0, 0], [5, 3]]
    sem = [[0.0, 1.0], [0.2, 0.4, 0.9, 0.35], [0.5], [], [0.5, 0.5, 0.5], list(np.round(rng.random(50), 6))]
    sem = [[float(v) for v in s] for s in sem]
    return {"wilson": wilson, "sem": sem, "sets": sets}


def dump(obj, path):
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"non-finite float {v} would not be valid JSON")
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    with open(path, "w") as f:
        json.dump(clean(obj), f, indent=1, sort_keys=True, allow_nan=False)
        f.write("\n")


def main(argv):
    if len(argv) == 3 and argv[1] == "make-inputs":
        dump(make_inputs(), argv[2])
    elif len(argv) == 4 and argv[1] == "compute":
        with open(argv[2]) as f:
            inputs = json.load(f)
        dump(compute(inputs), argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
