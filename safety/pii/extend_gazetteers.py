#!/usr/bin/env python3
"""Adds the given names, family names and cities of Faker's and mimesis's locales to
the gazetteers (first_names.txt, last_names.txt, places.txt), in their written form.

Only the locales that the external evaluation set's dev split uses are read: the
languages `external/generate.py` holds out for its test split stay out, so that split
still measures names the lists never saw.

    pip install faker==40.63.0 mimesis==22.2.0
    python3 safety/pii/extend_gazetteers.py

Idempotent: the lists are re-sorted and de-duplicated. Not added: one-word entries in
common_words.txt (the lists' invariant), one-word entries that SCOWL lists as ordinary
lower-case English words (`rust`, `java`; Debian's wamerican and wbritish, read from
/usr/share/dict), and one-word places that are also given or family names (`Mele`):
those would turn every mention of the name into a place.
"""

import importlib
import json
import os
import re
import sys
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "external"))
os.environ.setdefault("PYTHONHASHSEED", "0")
import generate  # noqa: E402  (the evaluation generator: locale lists, hold-out rule)

import faker  # noqa: E402
from mimesis.locales import Locale  # noqa: E402

SPECIAL = {"ð": "d", "đ": "d", "þ": "th", "ß": "ss", "ø": "o", "æ": "ae", "œ": "oe",
           "ł": "l", "ı": "i", "ə": "e", "ɛ": "e", "ɔ": "o"}


def norm(s):
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c)).lower()
    s = "".join(SPECIAL.get(c, c) for c in s)
    s = re.sub(r"[^a-z0-9]+", " ", s).strip()
    return s


def latin(s):
    return all("LATIN" in unicodedata.name(c, "") for c in s if c.isalpha())


def words_of(values):
    out = set()
    for v in values:
        if not isinstance(v, str) or not v or not latin(v):
            continue
        k = norm(v)
        if k and len(k) > 1 and not any(ch.isdigit() for ch in k):
            out.add(k)
    return out


def faker_lists(locale):
    first, last, cities = set(), set(), set()
    try:
        person = importlib.import_module(f"faker.providers.person.{locale}").Provider
        for attr in ("first_names", "first_names_male", "first_names_female",
                     "first_names_nonbinary"):
            v = getattr(person, attr, None)
            first |= words_of(v.keys() if isinstance(v, dict) else (v or []))
        v = getattr(person, "last_names", None)
        last |= words_of(v.keys() if isinstance(v, dict) else (v or []))
    except ImportError:
        pass
    try:
        addr = importlib.import_module(f"faker.providers.address.{locale}").Provider
        for attr in ("cities", "city_names"):
            v = getattr(addr, attr, None)
            if v:
                cities |= words_of(v.keys() if isinstance(v, dict) else v)
    except ImportError:
        pass
    return first, last, cities


def mimesis_lists(locale):
    import mimesis
    base = Path(mimesis.__file__).parent / "datasets" / "locales" / locale
    first, last, cities = set(), set(), set()
    try:
        person = json.loads((base / "person.json").read_text())
        names = person.get("names", {})
        for v in names.values() if isinstance(names, dict) else [names]:
            first |= words_of(v)
        surnames = person.get("surnames", {})
        for v in surnames.values() if isinstance(surnames, dict) else [surnames]:
            last |= words_of(v)
    except FileNotFoundError:
        pass
    try:
        addr = json.loads((base / "address.json").read_text())
        cities |= words_of(addr.get("city", []))
    except FileNotFoundError:
        pass
    return first, last, cities


def main():
    held = set(generate.holdout_languages())
    common = set((HERE / "common_words.txt").read_text().split("\n"))
    adds = {"first": set(), "last": set(), "places": set()}
    used = []
    for source, loc in generate.all_latin_locales():
        if generate.lang_of(loc) in held:
            continue
        f, l, c = faker_lists(loc) if source == "faker" else mimesis_lists(loc)
        used.append(f"{source}:{loc}")
        adds["first"] |= f
        adds["last"] |= l
        adds["places"] |= c
    dictionary = set()
    for d in ("/usr/share/dict/american-english", "/usr/share/dict/british-english"):
        words = Path(d).read_text(encoding="utf-8", errors="replace").split("\n")
        dictionary |= {w for w in words if w and w == w.lower()}
    files = {"first": "first_names.txt", "last": "last_names.txt", "places": "places.txt"}
    names = set()
    for kind in ("first", "last"):
        names |= set(x for x in (HERE / files[kind]).read_text().split("\n") if x) | adds[kind]
    for kind, name in files.items():
        path = HERE / name
        old = set(x for x in path.read_text().split("\n") if x)

        def keep(w):
            if " " in w:
                return True
            if w in common or w in dictionary:
                return False
            return kind != "places" or w not in names

        new = {w for w in adds[kind] if keep(w)}
        merged = sorted(old | new)
        path.write_text("\n".join(merged) + "\n")
        print(f"{name}: {len(old)} -> {len(merged)} (+{len(merged) - len(old)})")
    print("locales read:", len(used), "held out:", " ".join(sorted(held)))


if __name__ == "__main__":
    main()
