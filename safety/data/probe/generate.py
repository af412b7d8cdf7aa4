#!/usr/bin/env python3
"""SmolLM2's own answers to harmless prompts, labelled safe, for the answer probe.

The probe reads the hidden states of answers the served model writes itself. Trained
only on texts people wrote, it took the model's own short stories for harmful
compliance (15 of 32 benign stories cut in the serve bench). These answers teach it
what the model's ordinary output looks like. Prompts: the unlabelled (harmless) lines
of safety/data/train/{benign,behaviors,chatlogs}.jsonl, and story, poem and letter
requests built from word lists below. Nothing from the external test split is used.

    tether serve --port 18094 --data-dir /tmp/gen   # with [safety] enabled = false
    python3 safety/data/probe/generate.py http://127.0.0.1:18094 > safety/data/probe/model_answers.jsonl
    python3 safety/data/probe/generate.py http://127.0.0.1:18094 creative > safety/data/probe/model_creative.jsonl
    python3 safety/data/probe/generate.py http://127.0.0.1:18094 external-test > safety/external/test_model_answers.jsonl
"""
import json
import random
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18094"
# `creative`: only the story, poem and letter requests; `external-test`: the harmless
# prompts of the external test split (an evaluation set: the model's answers to them,
# never trained on); else only the training prompts.
PART = sys.argv[2] if len(sys.argv) > 2 else "train"
rng = random.Random(7)

prompts = []
for name in ("benign", "behaviors", "chatlogs"):
    for line in open(f"safety/data/train/{name}.jsonl"):
        v = json.loads(line)
        if not v.get("labels"):
            prompts.append(v["text"])
rng.shuffle(prompts)
prompts = prompts[:520]

who = ["cat", "robot", "sailor", "baker", "child", "grandmother", "dragon", "teacher",
       "farmer", "astronaut", "detective", "fox", "painter", "knight", "doctor", "owl"]
what = ["key", "map", "song", "door", "lamp", "coin", "letter", "garden", "river",
        "clock", "feather", "book", "bridge", "storm", "friend", "secret"]
forms = ["Write a short story about a {w} who finds a {x}.",
         "Write a poem about a {w} and a {x}.",
         "Tell me a bedtime story about a {w}.",
         "Write a letter from a {w} to a {x}.",
         "Describe a day in the life of a {w}.",
         "Write a funny dialogue between a {w} and a {x}."]
creative = [rng.choice(forms).format(w=rng.choice(who), x=rng.choice(what)) for _ in range(280)]
external = [json.loads(l) for l in open("safety/external/test_prompts.jsonl")]
external = [e["text"] for e in external if not e.get("labels")]
prompts = {"creative": creative, "external-test": external}.get(PART, prompts)


def answer(i_p):
    i, p = i_p
    body = json.dumps({"model": "tether", "messages": [{"role": "user", "content": p}],
                       "max_tokens": 96, "temperature": 0.7, "seed": {"creative": 5000, "external-test": 9000}.get(PART, 1000) + i}).encode()
    req = urllib.request.Request(f"{URL}/v1/chat/completions", body,
                                 {"content-type": "application/json"})
    v = json.load(urllib.request.urlopen(req, timeout=600))
    return v["choices"][0]["message"]["content"]


with ThreadPoolExecutor(8) as ex:
    for p, a in zip(prompts, ex.map(answer, enumerate(prompts))):
        if a.strip():
            print(json.dumps({"text": a, "labels": [], "prompt": p}, ensure_ascii=False), flush=True)
