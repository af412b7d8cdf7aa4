#!/usr/bin/env python3
"""Fits a logistic probe on hidden states written by `examples/probe_features.rs` and
scores it on the external test sets (the experiment in docs/benchmarks.md).

    DIR holds NAME.jsonl and NAME.bin for: train (what the classifier trains on),
    test_prompts, test_answers (safety/external/) and heldout_answers (safety/data/).
    python3 safety/probe_fit.py DIR [--prefix L16-]

Needs numpy and scikit-learn. Prints, per feature set, ROC-AUC (unsafe against safe)
with a bootstrap 95% interval, and the share of unsafe texts flagged when the threshold
lets through at most 3% of the safe ones.
"""
import argparse
import json

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

HIDDEN = 576


def load(d, prefix, name):
    rows = [json.loads(l) for l in open(f"{d}/{name}.jsonl") if l.strip()]
    x = np.fromfile(f"{d}/{prefix}{name}.bin", dtype="<f4").reshape(len(rows), -1)
    y = np.array([1 if r.get("labels") else 0 for r in rows])
    return x, y


def boot_auc(y, p, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if len(set(y[i])) == 2:
            aucs.append(roc_auc_score(y[i], p[i]))
    return np.percentile(aucs, [2.5, 97.5])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--train", default="train")
    a = ap.parse_args()
    xtr, ytr = load(a.dir, a.prefix, a.train)
    feats = {"mean": slice(0, HIDDEN), "last": slice(HIDDEN, 2 * HIDDEN),
             "mean+last": slice(0, 2 * HIDDEN)}
    for fname, sl in feats.items():
        sc = StandardScaler().fit(xtr[:, sl])
        m = LogisticRegression(C=0.05, max_iter=5000).fit(sc.transform(xtr[:, sl]), ytr)
        for name in ("test_prompts", "test_answers", "heldout_answers"):
            x, y = load(a.dir, a.prefix, name)
            p = m.predict_proba(sc.transform(x[:, sl]))[:, 1]
            lo, hi = boot_auc(y, p)
            thr = np.quantile(p[y == 0], 0.97)
            print(f"{fname:10s} {name:16s} ROC-AUC {roc_auc_score(y, p):.3f} "
                  f"[{lo:.3f}, {hi:.3f}]  unsafe flagged at 3% safe: {(p[y == 1] > thr).mean():.2f}")


if __name__ == "__main__":
    main()
