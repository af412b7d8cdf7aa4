#!/usr/bin/env python3
"""External (third-party generated) evaluation set for the personal-data anonymizer.

    pip install faker==40.63.0 mimesis==22.2.0
    python3 safety/pii/external/generate.py                  # dev.jsonl, test.jsonl, nonlatin.jsonl
    python3 safety/pii/external/generate.py --split test --seed 99 --n 500 --out /tmp/x.jsonl
    python3 safety/pii/external/generate.py --list-locales   # the locale split, then exit

Every personal value (names, addresses, phone numbers, e-mail addresses, IBANs, card
numbers, CVVs, expiry dates, SSNs, IPs, URLs, dates of birth) comes from Faker or mimesis,
in the locale's own format, as the library produced it; this script only chooses the
English sentence around it. No value list of safety/pii/generate_eval.py is used.

Output: one JSON object per line,
    {"text": ..., "spans": [{"type": T, "start": s, "end": e}, ...],
     "meta": {"source": "faker"|"mimesis"|"none", "locale": ..., "template": ..., "unseen_locale": bool}}
Offsets are Python str (code point) offsets, end exclusive, sorted, non-overlapping.
"meta" is informational (the Rust loader ignores unknown keys).

Labelling conventions (differences from generate_eval.py are marked *):
  PERSON        the name as the library formats it, without a leading title/honorific from
                the locale's own prefix list ("Dr.", "Frau", "pan", "Ông") and without a
                trailing academic suffix ("MD", "B.A."); generational suffixes ("Jr.", "III")
                stay inside. "LAST, FIRST" in capitals or "Last, First" is one span.
  LOCATION      a full address as the library formats it is one span (multi-line kept in
                label-like templates, lines joined with ", " elsewhere); also a street
                address alone, a unit alone ("Suite 254"), a city or a country alone.
  PHONE_NUMBER  the library's string. * An attached extension such as "x579" or " x783"
                (Faker en_US/en_CA/es_MX/tr_TR formats) is inside the span; an " ext. 12"
                added by a template is outside.
  CREDIT_CARD   the card number only, compact (Faker) or grouped by spaces (mimesis).
  CVV *         the security code after a cue ("CVV: 123", "security code 4821").
  CARD_EXPIRY * the expiry after a cue ("exp 04/27"). Bare digit groups after a card
                number ("4111111111111111 0423") are NOT labelled.
  IBAN_CODE     Faker's compact IBAN; about a third are re-printed in groups of four.
  US_SSN        Faker en_US ssn() only.
  DATE_TIME     dates of birth after a cue only (the date value from the library, printed
                with one of a few formats).
  EMAIL_ADDRESS, IP_ADDRESS, URL: the library's string.
"""

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import random
import sys
import unicodedata
import warnings
from collections import Counter

# Some Faker data tables are built from Python sets (e.g. it_IT cities), so their order,
# and with it the output, depends on string hashing: run under a fixed PYTHONHASHSEED.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)  # Faker's en_PH bank provider logs a warning per call

import faker  # noqa: E402
import mimesis  # noqa: E402
from faker import Faker  # noqa: E402
from mimesis import Address, Datetime, Development, Food, Hardware, Internet, Payment, Person  # noqa: E402
from mimesis import Transport  # noqa: E402
from mimesis.locales import Locale  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FAKER_VERSION = "40.63.0"
MIMESIS_VERSION = "22.2.0"
HOLDOUT_SALT = "tether-pii-external-v1"
HOLDOUT_SHARE = 0.20
NEG_SHARE = 0.15

# --------------------------------------------------------------------------------------
# Locales and what each one provides natively (probed on faker 40.63.0 / mimesis 22.2.0:
# a field is listed only where the locale has its own provider for it, so no locale
# silently falls back to en_US data; in the Latin set only where every sampled value was
# Latin script, or digits for phones/IBANs).
#   name  full/first/last names        addr  address, street address, city, country
#   unit  secondary address ("Suite 254", "Flat 8", "Piso 9")
#   phone national phone numbers       phx   phone formats with an attached extension
#   iban  IBAN                         ssn   US SSN        mil  US military addresses
#   email e-mail addresses (every locale with names gets them; listed for the others)
# Card numbers, CVVs, expiry dates, IPs, URLs and dates of birth are locale-independent
# and are available in every locale.
# --------------------------------------------------------------------------------------

FAKER_LATIN = {
    "am_ET": "phone", "ar_AE": "phone", "ar_DZ": "phone", "ar_JO": "phone", "ar_PS": "phone",
    "az_AZ": "name addr phone iban", "bg_BG": "phone email", "bs_BA": "phone email",
    "cs_CZ": "name addr phone iban", "da_DK": "name addr phone iban",
    "de_AT": "name addr phone iban", "de_CH": "name addr phone iban", "de_DE": "name addr phone iban",
    "de_LI": "name phone", "de_LU": "name phone", "el_GR": "phone iban email",
    "en_AU": "addr phone email", "en_BD": "addr unit", "en_CA": "addr unit phone phx",
    "en_GB": "name addr unit phone iban", "en_IE": "name addr iban", "en_IN": "name addr phone iban",
    "en_KE": "name", "en_MS": "addr", "en_NG": "name", "en_NZ": "name addr unit phone",
    "en_PH": "addr iban phone email", "en_PK": "name", "en_TH": "name",
    "en_US": "name addr unit phone phx ssn mil",
    "es_AR": "name addr unit phone iban", "es_CA": "name", "es_CL": "name addr unit phone",
    "es_CO": "name addr phone iban", "es_ES": "name addr unit phone iban",
    "es_MX": "name addr unit phone phx iban", "et_EE": "name", "fa_IR": "phone iban email",
    "fi_FI": "name addr phone iban", "fr_BE": "name", "fr_CA": "name addr", "fr_CH": "name addr phone iban",
    "fr_DZ": "name addr phone", "fr_FR": "name addr phone iban", "fr_QC": "name", "ga_IE": "name",
    "ha_NG": "name", "he_IL": "phone", "hi_IN": "phone", "hr_HR": "name addr phone",
    "hu_HU": "name addr phone", "hy_AM": "phone", "id_ID": "name addr phone", "ig_NG": "name",
    "is_IS": "name", "it_CH": "phone iban", "it_IT": "name addr unit phone iban",
    "ja_JP": "name phone", "ka_GE": "phone", "ko_KR": "phone email", "lt_LT": "name phone",
    "lv_LV": "name phone", "mk_MK": "phone iban email", "ne_NP": "phone",
    "nl_BE": "name addr phone iban", "nl_NL": "name addr phone iban", "no_NO": "name addr phone iban",
    "pl_PL": "name addr phone iban", "pt_BR": "name addr phone iban", "pt_PT": "name addr phone iban",
    "ro_RO": "name addr unit phone iban", "ru_RU": "phone iban email", "sk_SK": "name addr phone iban",
    "sl_SI": "name addr phone", "sv_SE": "name addr phone", "sw": "name", "th_TH": "phone iban email",
    "tr_TR": "name phone phx iban", "tw_GH": "phone", "uk_UA": "phone iban email",
    "uz_UZ": "name phone", "vi_VN": "name addr phone", "yo_NG": "name",
    "zh_CN": "name phone iban", "zh_TW": "name phone", "zu_ZA": "name addr unit",
}
# ja_JP, zh_CN, zh_TW names in the Latin set come from Faker's romanized-name methods.
ROMANIZED = {"ja_JP", "zh_CN", "zh_TW"}

MIMESIS_LATIN = [
    "az", "cs", "da", "de", "de-at", "de-ch", "en", "en-au", "en-ca", "en-gb", "es", "es-mx",
    "et", "fi", "fr", "hr", "hu", "is", "it", "nl", "nl-be", "no", "pl", "pt", "pt-br", "sk",
    "sv", "tr",
]

# Separate, clearly marked file: non-Latin scripts (names/addresses in Cyrillic, Greek,
# Hebrew, Arabic, Devanagari, Bengali, Thai, Georgian, Armenian, Hangul, Han, Kana).
FAKER_NONLATIN = {
    "ar_AA": "name", "ar_DZ": "name addr", "ar_PS": "name", "ar_SA": "name",
    "bg_BG": "name", "bn_BD": "name addr phone", "el_GR": "name addr", "fa_IR": "name addr",
    "he_IL": "name addr", "hi_IN": "name addr", "hy_AM": "name addr", "ja_JP": "name addr",
    "ka_GE": "name addr", "ko_KR": "name addr", "mk_MK": "name addr", "ne_NP": "name addr",
    "ru_RU": "name addr", "ta_IN": "name addr", "th_TH": "name addr", "uk_UA": "name addr",
    "zh_CN": "name addr", "zh_TW": "name addr",
}
MIMESIS_NONLATIN = ["ar-ae", "ar-eg", "ar-sa", "el", "fa", "ja", "kk", "ko", "ru", "uk", "zh"]

GENERATIONAL = {"Jr.", "Jr", "Sr.", "Sr", "II", "III", "IV", "V"}
NO_PREFIX_STRIP = {"fr_FR", "fr_CA", "fr_CH", "fr_BE", "fr_QC", "fr_DZ"}  # "de", "Le": particles


def lang_of(locale):
    return locale.replace("-", "_").split("_")[0].lower()


def all_latin_locales():
    out = [("faker", loc) for loc in sorted(FAKER_LATIN)]
    out += [("mimesis", loc) for loc in MIMESIS_LATIN]
    return out


def holdout_languages():
    """Deterministic rule: order language codes by sha256(salt + code); never hold out
    English; hold out languages in that order until they cover >= 20% of the locales."""
    locs = all_latin_locales()
    per_lang = Counter(lang_of(l) for _, l in locs)
    order = sorted(per_lang, key=lambda c: hashlib.sha256((HOLDOUT_SALT + c).encode()).hexdigest())
    held, covered = [], 0
    for c in order:
        if covered >= HOLDOUT_SHARE * len(locs):
            break
        if c == "en":
            continue
        held.append(c)
        covered += per_lang[c]
    return sorted(held)


# --------------------------------------------------------------------------------------
# Pieces: a text is a list of (string, type-or-None); spans are the typed pieces.
# --------------------------------------------------------------------------------------

class Skip(Exception):
    """The chosen locale cannot fill this slot acceptably; pick another template/locale."""


def is_latin(s):
    return all("LATIN" in unicodedata.name(ch, "") or ch in "ºª°№" for ch in s if ch.isalpha())


def inline(s):
    """Multi-line library value on one line: lines joined with ', '."""
    lines = [ln.strip() for ln in s.split("\n")]
    lines = [ln.rstrip(",").strip() for ln in lines if ln.strip()]
    return ", ".join(lines)


class Src:
    """One locale of one library. Methods return lists of pieces."""

    def __init__(self, source, locale, caps, rng, latin):
        self.source, self.locale, self.latin = source, locale, latin
        self.caps = set(caps.split()) | {"card", "cvv", "exp", "ip", "url", "dob"}
        if "name" in self.caps:
            self.caps.add("email")
        if "addr" in self.caps:
            self.caps.add("city")
        seed = rng.randrange(2 ** 31)
        if source == "faker":
            self.f = Faker(locale)
            self.f.seed_instance(seed)
            self._prefixes, self._suffixes = self._faker_affixes()
        else:
            loc = Locale(locale)
            r = random.Random(seed)
            self.person = Person(loc, seed=r.randrange(2 ** 31))
            self.address_p = Address(loc, seed=r.randrange(2 ** 31))
            self.pay = Payment(seed=r.randrange(2 ** 31))
            self.net = Internet(seed=r.randrange(2 ** 31))
            self.dt = Datetime(loc, seed=r.randrange(2 ** 31))
        self.rng = random.Random(seed ^ 0x5EED)

    # ---- helpers -------------------------------------------------------------------
    def _faker_affixes(self):
        pre, suf = set(), set()
        for p in self.f.providers:
            parts = type(p).__module__.split(".")
            if len(parts) >= 2 and parts[-2] == "person":
                for attr in ("prefixes", "prefixes_male", "prefixes_female", "prefixes_nonbinary"):
                    pre.update(getattr(p, attr, None) or ())
                for attr in ("suffixes", "suffixes_male", "suffixes_female", "suffixes_nonbinary"):
                    suf.update(getattr(p, attr, None) or ())
                break
        if self.locale in NO_PREFIX_STRIP:
            pre = set()
        return (sorted(pre, key=lambda x: (-len(x), x)),
                sorted(suf - GENERATIONAL, key=lambda x: (-len(x), x)))

    def _check(self, s):
        if self.latin and not is_latin(s):
            raise Skip("non-Latin value")
        return s

    def _quiet(self, fn, *a, **k):
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*a, **k)

    # ---- names ---------------------------------------------------------------------
    def full_name_pieces(self):
        if self.source == "mimesis":
            return [(self._check(self.person.full_name()), "PERSON")]
        if self.latin and self.locale in ROMANIZED:
            return [(self.f.romanized_name(), "PERSON")]
        name = self._check(self.f.name())
        head = ""
        stripped = True
        while stripped:
            stripped = False
            for p in self._prefixes:
                if name.startswith(p + " ") and len(name) > len(p) + 1:
                    head += p + " "
                    name = name[len(p) + 1:]
                    stripped = True
                    break
        tail = ""
        stripped = True
        while stripped:
            stripped = False
            for s in self._suffixes:
                if name.endswith(" " + s) and len(name) > len(s) + 1:
                    tail = " " + s + tail
                    name = name[: -len(s) - 1]
                    stripped = True
                    break
        out = []
        if head:
            out.append((head, None))
        out.append((name, "PERSON"))
        if tail:
            out.append((tail, None))
        return out

    def full_name(self):
        return "".join(v for v, t in self.full_name_pieces() if t)

    def first_name(self):
        if self.source == "mimesis":
            return self._check(self.person.first_name())
        if self.latin and self.locale in ROMANIZED:
            return self.f.first_romanized_name()
        return self._check(self.f.first_name())

    def last_name(self):
        if self.source == "mimesis":
            return self._check(self.person.last_name())
        if self.latin and self.locale in ROMANIZED:
            return self.f.last_romanized_name()
        return self._check(self.f.last_name())

    # ---- places --------------------------------------------------------------------
    def address(self, multiline):
        if self.source == "faker":
            a = self.f.address()
            if self.locale == "en_US":  # military formats are their own template kind
                for _ in range(10):
                    if not any(m in a for m in ("APO ", "FPO ", "DPO ")):
                        break
                    a = self.f.address()
        else:
            a = self._mimesis_address()
        a = self._check(a)
        return a if multiline else inline(a)

    def _mimesis_address(self):
        # mimesis has no full-address formatter: street line from Address.address(),
        # then postcode/city/state in the usual order for the locale.
        ap = self.address_p
        street, city, pc = ap.address(), ap.city(), ap.postal_code()
        if self.locale in ("en", "en-ca"):
            return f"{street}\n{city}, {ap.state(abbr=True)} {pc}"
        if self.locale == "en-au":
            return f"{street}\n{city} {ap.state(abbr=True)} {pc}"
        if self.locale == "en-gb":
            return f"{street}\n{city}\n{pc}"
        return f"{street}\n{pc} {city}"

    def military(self):
        fmt = self.rng.choice([
            "{{military_apo}}\nAPO {{military_state}} {{postcode}}",
            "{{military_ship}} {{last_name}}\nFPO {{military_state}} {{postcode}}",
            "{{military_dpo}}\nDPO {{military_state}} {{postcode}}",
        ])  # the three military formats of Faker's en_US address_formats
        return self.f.parse(fmt)

    def street(self):
        if self.source == "faker":
            return self._check(inline(self.f.street_address()))
        return self._check(self.address_p.address())

    def unit(self):
        return self._check(self.f.secondary_address())

    def city(self):
        if self.source == "faker":
            return self._check(self.f.city())
        return self._check(self.address_p.city())

    def country(self):
        if self.source == "faker":
            return self._check(self.f.country())
        return self._check(self.address_p.country())

    # ---- contact -------------------------------------------------------------------
    def phone(self):
        if self.source == "mimesis":
            return self.person.phone_number()
        if self.locale == "en_PH":
            return self.rng.choice([self.f.mobile_number, self.f.landline_number])()
        for _ in range(20):
            p = self.f.phone_number()
            if len([c for c in p if c.isdigit()]) >= 6:  # a few locales emit 4-digit short codes
                return p
        raise Skip("short phone")

    def phone_x(self):
        for _ in range(200):
            p = self.f.phone_number()
            if "x" in p:
                return p
        raise Skip("no extension format")

    def email(self):
        if self.source == "mimesis":
            return self.person.email()
        m = self.rng.choice([self.f.email, self.f.email, self.f.free_email, self.f.company_email])
        return m()

    # ---- finance -------------------------------------------------------------------
    def iban(self):
        v = self._quiet(self.f.iban)
        if self.rng.random() < 0.33:
            v = " ".join(v[i:i + 4] for i in range(0, len(v), 4))
        return v

    def ssn(self):
        return self.f.ssn()

    def card(self):
        """(number, cvv, expiry)"""
        if self.source == "mimesis":
            return (self.pay.credit_card_number(), str(self.pay.cvv()).zfill(3),
                    self.pay.credit_card_expiration_date())
        cc = [p for p in self.f.providers if ".credit_card" in type(p).__module__][0]
        ctype = self.f.random_element(list(cc.credit_card_types))  # the locale's card brands
        return (self.f.credit_card_number(card_type=ctype),
                self.f.credit_card_security_code(card_type=ctype),
                self.f.credit_card_expire(start=datetime.date(2025, 1, 1), end=datetime.date(2033, 12, 31)))

    # ---- network -------------------------------------------------------------------
    def ip(self):
        if self.source == "mimesis":
            return self.net.ip_v4() if self.rng.random() < 0.7 else self.net.ip_v6()
        return self.rng.choice([self.f.ipv4, self.f.ipv4, self.f.ipv4_public, self.f.ipv6])()

    def url(self):
        if self.source == "mimesis":
            return self.rng.choice([self.net.url, self.net.uri])()
        return self.rng.choice([self.f.uri, self.f.uri, self.f.url])()

    def dob(self):
        if self.source == "mimesis":
            d = self.dt.date(start=1940, end=2006)
        else:
            d = self.f.date_between_dates(date_start=datetime.date(1940, 1, 1), date_end=datetime.date(2006, 12, 31))
        fmt = self.rng.choice(["%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y", "%d %B %Y"])
        return d.strftime(fmt)


# --------------------------------------------------------------------------------------
# Non-personal filler (product names, capitalised ordinary words) from the libraries.
# --------------------------------------------------------------------------------------

class Filler:
    def __init__(self, seed):
        r = random.Random(seed)
        self.rng = random.Random(r.randrange(2 ** 31))
        self.f = Faker("en_US")
        self.f.seed_instance(r.randrange(2 ** 31))
        self.hw = Hardware(seed=r.randrange(2 ** 31))
        self.dev = Development(seed=r.randrange(2 ** 31))
        self.food = Food(Locale.EN, seed=r.randrange(2 ** 31))
        self.tr = Transport(seed=r.randrange(2 ** 31))

    def product(self):
        return self.rng.choice([self.hw.phone_model, self.hw.cpu, self.hw.graphics,
                                self.dev.programming_language, self.dev.os, self.tr.car])()

    def maker(self):
        return self.rng.choice([self.hw.manufacturer, self.tr.manufacturer])()

    def dish(self):
        return self.rng.choice([self.food.dish, self.food.drink, self.food.fruit])()

    def phrase(self):
        return self.f.catch_phrase()

    def job(self):
        return self.f.job()

    def sentence(self):
        return self.f.sentence(nb_words=self.rng.randint(5, 10))

    def version(self):
        return self.dev.version()

    def price(self):
        return self.f.pricetag()

    def num(self, n):
        return "".join(self.rng.choice("0123456789") for _ in range(n))

    def date(self):
        d = self.f.date_between_dates(date_start=datetime.date(2021, 1, 1), date_end=datetime.date(2025, 12, 31))
        return d.strftime(self.rng.choice(["%Y-%m-%d", "%d %b", "%B %d"]))

    def time(self):
        return f"{self.rng.randint(7, 19):02d}:{self.rng.choice(['00', '15', '30', '45'])}"

    def weekday(self):
        return self.f.day_of_week()

    def month(self):
        return self.f.month_name()


# --------------------------------------------------------------------------------------
# Templates. A template is (kind, needs, weight, body) where body(src, fill, rng) returns
# a list of pieces. Literal text contains no personal data.
# --------------------------------------------------------------------------------------

T = []


def template(kind, needs, weight):
    def deco(fn):
        T.append((kind, frozenset(needs.split()), weight, fn))
        return fn
    return deco


def P(v, t=None):
    return (v, t)


def name_pieces(src):
    return src.full_name_pieces()


def pick(rng, *xs):
    return xs[rng.randrange(len(xs))]


# ---- PERSON ----------------------------------------------------------------------------

@template("first_name_alone", "name", 8)
def _(s, fl, r):
    n = s.first_name()
    return [P(n, "PERSON"), P(" " + pick(r,
        "will send it tomorrow.", "said the build is green now.", "is out until " + fl.weekday() + ".",
        "can take the " + fl.product() + " ticket.", "already approved the refund.",
        "wants the slides before the call.", "will cover the on-call shift.", "thinks we should wait."))] \
        if r.random() < 0.45 else [P(pick(r, "ask ", "Ask ", "ping ", "cc ", "thanks ", "Thanks, ",
                                        "loop in ", "waiting on ", "talked to ", "check with ")),
                                   P(n, "PERSON"),
                                   P(pick(r, "", ".", " about it", " before " + fl.weekday(), "?", " when free"))]


@template("full_name", "name", 8)
def _(s, fl, r):
    pre = pick(r, "My name is ", "Please forward this to ", "Meeting with ", "Signed by ",
               "The account holder is ", "Reviewed by ", "Contact person: ", "I spoke with ",
               "Assigned to ", "Best regards,\n", "Patient: ", "Invoice addressed to ")
    post = pick(r, "", ".", " yesterday.", " (sales).", " for the " + fl.product() + " order.",
                "\n" + fl.job(), " and she agreed.", " and he agreed.")
    return [P(pre)] + name_pieces(s) + [P(post)]


@template("name_caps", "name", 4)
def _(s, fl, r):
    first, last = s.first_name(), s.last_name()
    v = pick(r, f"{last.upper()}, {first.upper()}", f"{first.upper()} {last.upper()}",
             s.full_name().upper())
    pre = pick(r, "PASSENGER: ", "NAME: ", "Beneficiary ", "CARDHOLDER ", "Guest: ", "PAYEE: ",
               "Boarding pass for ", "")
    post = pick(r, "", " / seat " + fl.num(2) + "C", " - gate B" + fl.num(2), "\nCLASS: ECONOMY", ".")
    return [P(pre), P(v, "PERSON"), P(post)]


@template("last_first", "name", 3)
def _(s, fl, r):
    v = f"{s.last_name()}, {s.first_name()}"
    pre = pick(r, "Employee: ", "Author: ", "Registrant: ", "Sorted list entry: ", "Referee: ", "Tenant ")
    post = pick(r, "", ".", " (" + fl.job() + ")", "; badge " + fl.num(5))
    return [P(pre), P(v, "PERSON"), P(post)]


# ---- LOCATION --------------------------------------------------------------------------

@template("address_inline", "addr", 7)
def _(s, fl, r):
    pre = pick(r, "Ship it to ", "My address is ", "New billing address: ", "We moved to ",
               "Deliver to ", "Registered office: ", "The package went to ", "Home address - ")
    post = pick(r, "", ".", " please.", " - leave it at the door.", " (second floor).")
    return [P(pre), P(s.address(False), "LOCATION"), P(post)]


@template("address_label", "name addr", 4)
def _(s, fl, r):
    head = pick(r, "SHIP TO:\n", "Deliver to\n", "", "Return address:\n")
    tail = pick(r, "", "\nRef " + fl.num(8), "\nFragile", "\nWeight 2.4 kg")
    return [P(head)] + name_pieces(s) + [P("\n"), P(s.address(True), "LOCATION"), P(tail)]


@template("military", "mil", 2)
def _(s, fl, r):
    pre = pick(r, "Mail it to ", "Forwarding address: ", "APO/FPO shipping to ", "Send the care package to ")
    multiline = r.random() < 0.4
    v = s.military()
    if not multiline:
        v = v.replace("\n", pick(r, ", ", " / ", " "))
    else:
        pre = pre.rstrip() + "\n"
    return [P(pre), P(v, "LOCATION"), P(pick(r, "", ".", " thanks"))]


@template("street_only", "addr", 2)
def _(s, fl, r):
    pre = pick(r, "Meet me at ", "The office is at ", "Pickup point: ", "It's the house at ")
    return [P(pre), P(s.street(), "LOCATION"), P(pick(r, "", ".", " around " + fl.time()))]


@template("unit_only", "unit", 1.5)
def _(s, fl, r):
    pre = pick(r, "Use the side entrance for ", "Deliveries for ", "Keys are in ", "Moved from ")
    return [P(pre), P(s.unit(), "LOCATION"), P(pick(r, ".", "", " next week."))]


@template("city_alone", "city", 4)
def _(s, fl, r):
    pre = pick(r, "I'm based in ", "She grew up in ", "Flying to ", "Our warehouse in ",
               "Weather in ", "Relocating to ", "born and raised in ")
    return [P(pre), P(s.city(), "LOCATION"), P(pick(r, ".", "", " next " + fl.weekday() + ".", "!"))]


@template("country_alone", "addr", 1)
def _(s, fl, r):
    return [P(pick(r, "Shipping to ", "Citizen of ", "Visiting ")), P(s.country(), "LOCATION"),
            P(pick(r, ".", "", " this " + fl.month() + "."))]


# ---- PHONE -----------------------------------------------------------------------------

@template("phone", "phone", 8)
def _(s, fl, r):
    pre = pick(r, "Call me at ", "Tel: ", "phone ", "Mobile: ", "You can reach the office on ",
               "WhatsApp ", "Fax: ", "callback number ", "Phone number: ", "My number is ")
    post = pick(r, "", ".", " after " + fl.time(), " (evenings)", ", thanks")
    return [P(pre), P(s.phone(), "PHONE_NUMBER"), P(post)]


@template("phone_ext", "phx", 2)
def _(s, fl, r):
    pre = pick(r, "Direct line: ", "Call ", "Office ", "reach me at ")
    return [P(pre), P(s.phone_x(), "PHONE_NUMBER"), P(pick(r, "", ".", " during business hours"))]


@template("phone_ext_suffix", "phone", 1)
def _(s, fl, r):
    return [P(pick(r, "Desk phone ", "Call ")), P(s.phone(), "PHONE_NUMBER"),
            P(pick(r, " ext. ", " ext ", " extension ") + fl.num(r.randint(2, 4)))]


# ---- EMAIL / IP / URL -------------------------------------------------------------------

@template("email", "email", 5)
def _(s, fl, r):
    pre = pick(r, "Email me at ", "Contact: ", "reply-to: ", "Send the invoice to ",
               "Login: ", "my email is ", "From: ", "CC ")
    return [P(pre), P(s.email(), "EMAIL_ADDRESS"), P(pick(r, "", ".", " thanks", " asap"))]


@template("ip", "ip", 3)
def _(s, fl, r):
    ip = s.ip()
    kind = r.randrange(3)
    if kind == 0:
        return [P(f"{fl.date()} {fl.time()} WARN login failed for user id {fl.num(6)} from "),
                P(ip, "IP_ADDRESS")]
    if kind == 1:
        return [P("Blocked requests from "), P(ip, "IP_ADDRESS"), P(" after " + fl.num(2) + " attempts.")]
    return [P('{"event": "session_start", "client_ip": "'), P(ip, "IP_ADDRESS"), P('", "v": "' + fl.version() + '"}')]


@template("url", "url", 2)
def _(s, fl, r):
    pre = pick(r, "See ", "My profile: ", "Docs at ", "Uploaded to ", "link: ")
    return [P(pre), P(s.url(), "URL"), P(pick(r, "", " for details", " (private)"))]


# ---- FINANCE ---------------------------------------------------------------------------

@template("card_alone", "card", 2)
def _(s, fl, r):
    num, _, _ = s.card()
    pre = pick(r, "Card number: ", "Charge it to ", "my card is ", "Payment card ")
    return [P(pre), P(num, "CREDIT_CARD"), P(pick(r, "", ".", " please"))]


@template("card_trailing", "card", 3)
def _(s, fl, r):
    num, cvv, exp = s.card()
    k = r.randrange(5)
    if k == 0:  # bare digits right after the number: not labelled
        return [P(pick(r, "", "card ", "cc: ")), P(num, "CREDIT_CARD"), P(" " + fl.num(4))]
    if k == 1:
        return [P("card "), P(num, "CREDIT_CARD"), P(" exp "), P(exp, "CARD_EXPIRY"),
                P(" cvv "), P(cvv, "CVV")]
    if k == 2:
        return [P(num, "CREDIT_CARD"), P(" " + pick(r, "valid thru ", "exp. ", "expires ")),
                P(exp, "CARD_EXPIRY"), P(pick(r, " ", ", ") + pick(r, "CVC ", "CVV2 ", "code ")),
                P(cvv, "CVV")]
    if k == 3:
        return [P(pick(r, "Visa/MC: ", "Card: ")), P(num, "CREDIT_CARD"),
                P(" for order #" + fl.num(6))]
    return [P('{"pan": "'), P(num, "CREDIT_CARD"), P('", "exp": "'), P(exp, "CARD_EXPIRY"),
            P('", "cvv": "'), P(cvv, "CVV"), P('"}')]


@template("cvv_exp_cue", "card", 3)
def _(s, fl, r):
    _, cvv, exp = s.card()
    k = r.randrange(4)
    if k == 0:
        return [P(pick(r, "CVV: ", "CVV ", "cvc: ", "security code ", "Security code: ")), P(cvv, "CVV"),
                P(pick(r, "", ".", " (back of card)"))]
    if k == 1:
        return [P(pick(r, "exp ", "Exp: ", "expiry date ", "Expiration: ", "valid until ")),
                P(exp, "CARD_EXPIRY"), P(pick(r, "", ".", " on the new card"))]
    if k == 2:
        return [P("the card ending in " + fl.num(4) + " expires "), P(exp, "CARD_EXPIRY"),
                P(" and the CVV is "), P(cvv, "CVV")]
    return [P("Expiry "), P(exp, "CARD_EXPIRY"), P(" / CVC "), P(cvv, "CVV")]


@template("iban", "iban", 4)
def _(s, fl, r):
    pre = pick(r, "Pay invoice #" + fl.num(5) + " to ", "IBAN: ", "Please wire the deposit to ",
               "Bank account ", "Refund to IBAN ")
    return [P(pre), P(s.iban(), "IBAN_CODE"), P(pick(r, "", ".", " by " + fl.weekday()))]


@template("ssn", "ssn", 2)
def _(s, fl, r):
    pre = pick(r, "SSN: ", "My social security number is ", "ssn=", "Social Security No. ")
    return [P(pre), P(s.ssn(), "US_SSN"), P(pick(r, "", ".", " for the W-2"))]


@template("dob", "dob", 1.5)
def _(s, fl, r):
    pre = pick(r, "Date of birth: ", "DOB ", "born ", "Birthday: ", "birthdate ")
    return [P(pre), P(s.dob(), "DATE_TIME"), P(pick(r, "", ".", "; member since 2019"))]


# ---- multi-entity records ----------------------------------------------------------------

@template("csv_row", "name phone email", 3)
def _(s, fl, r):
    head = pick(r, "name,phone,email\n", "", "Import row " + fl.num(3) + ": ")
    return [P(head), P(s.full_name(), "PERSON"), P(","), P(s.phone(), "PHONE_NUMBER"), P(","),
            P(s.email(), "EMAIL_ADDRESS")]


@template("csv_row_addr", "name addr", 2)
def _(s, fl, r):
    return [P(s.first_name(), "PERSON"), P(","), P(s.last_name(), "PERSON"), P(',"'),
            P(s.address(False), "LOCATION"), P('",' + fl.num(3))]


@template("json_user", "name email", 3)
def _(s, fl, r):
    out = [P('{"user": {"name": "'), P(s.full_name(), "PERSON"), P('", "email": "'),
           P(s.email(), "EMAIL_ADDRESS"), P('"')]
    if "phone" in s.caps and r.random() < 0.6:
        out += [P(', "phone": "'), P(s.phone(), "PHONE_NUMBER"), P('"')]
    if r.random() < 0.4:
        out += [P(', "last_ip": "'), P(s.ip(), "IP_ADDRESS"), P('"')]
    return out + [P("}}")]


@template("form", "name", 4)
def _(s, fl, r):
    out = [P("Name: ")] + name_pieces(s)
    if "addr" in s.caps and r.random() < 0.7:
        out += [P("\nAddress: "), P(s.address(r.random() < 0.3), "LOCATION")]
    if "phone" in s.caps and r.random() < 0.7:
        out += [P("\nPhone: "), P(s.phone(), "PHONE_NUMBER")]
    if r.random() < 0.5:
        out += [P("\nEmail: "), P(s.email(), "EMAIL_ADDRESS")]
    if r.random() < 0.2:
        out += [P("\nDate of birth: "), P(s.dob(), "DATE_TIME")]
    return out + [P(pick(r, "", "\nPreferred contact: email", "\nPlan: " + fl.product()))]


@template("signature", "name phone", 3)
def _(s, fl, r):
    out = [P(pick(r, "Thanks,\n", "Best,\n", "Kind regards\n", "--\n"))] + name_pieces(s)
    out += [P("\n" + fl.job() + "\n")]
    out += [P(pick(r, "T ", "Tel. ", "m: ", "")), P(s.phone(), "PHONE_NUMBER")]
    if "addr" in s.caps and r.random() < 0.5:
        out += [P("\n"), P(s.address(False), "LOCATION")]
    return out


@template("support_ticket", "name email", 3)
def _(s, fl, r):
    out = [P(f"Ticket #{fl.num(6)} - {fl.product()} not syncing\nCustomer: ")] + name_pieces(s)
    out += [P(" <"), P(s.email(), "EMAIL_ADDRESS"), P(">\n")]
    out += [P(pick(r, "Customer reports the app crashes on startup.",
                   "Refund requested for the annual plan.", "Login loop after the " + fl.version() + " update."))]
    if r.random() < 0.4:
        out += [P(" Seen from "), P(s.ip(), "IP_ADDRESS"), P(".")]
    return out


@template("chat_payment", "name card", 2)
def _(s, fl, r):
    num, cvv, exp = s.card()
    return [P("hey it's "), P(s.first_name(), "PERSON"), P(pick(r, ", here's the card: ", " - use ")),
            P(num, "CREDIT_CARD"), P(pick(r, " exp ", " exp. ")), P(exp, "CARD_EXPIRY"),
            P(pick(r, " cvv ", " security code ")), P(cvv, "CVV")]


@template("email_letter", "name addr", 2)
def _(s, fl, r):
    first = s.first_name()
    return [P("Hi "), P(first, "PERSON"), P(pick(r, ",\n\n", ",\n")),
            P(pick(r, "Your order has shipped to ", "We updated your address to ", "The courier will deliver to ")),
            P(s.address(False), "LOCATION"),
            P(pick(r, ". ", ".\n")), P(pick(r, "Regards, the " + fl.maker() + " team", "Cheers"))]


@template("wire", "name iban", 2)
def _(s, fl, r):
    return [P("Beneficiary: ")] + name_pieces(s) + [P(pick(r, "\nIBAN: ", ", IBAN ")), P(s.iban(), "IBAN_CODE"),
                                                     P(pick(r, "", "\nAmount: " + fl.price(), "\nReference: INV-" + fl.num(6)))]


@template("us_record", "ssn name", 1.5)
def _(s, fl, r):
    out = [P("Employee ")] + name_pieces(s) + [P(", SSN "), P(s.ssn(), "US_SSN")]
    if r.random() < 0.5:
        out += [P(", lives at "), P(s.address(False), "LOCATION")]
    return out


# ---- negatives (no personal data) --------------------------------------------------------

NEG_TEMPLATES = [
    lambda fl, r: f"{fl.maker()} shipped the {fl.product()} update on {fl.weekday()}.",
    lambda fl, r: f"Please restart the {fl.product()} build agent before {fl.time()}.",
    lambda fl, r: f"New in {fl.version()}: {fl.phrase()}.",
    lambda fl, r: f"Order #{fl.num(7)} ({fl.product()}) ships in {r.randint(2, 9)} days for {fl.price()}.",
    lambda fl, r: f"Summer Sale: {fl.dish()} and {fl.dish()} half price until {fl.month()}.",
    lambda fl, r: f"{fl.sentence()}",
    lambda fl, r: f"{fl.sentence()} {fl.sentence()}",
    lambda fl, r: f"Monday Standup Notes\n- {fl.phrase()}\n- Release {fl.version()} is blocked on QA",
    lambda fl, r: f"Can someone review the {fl.job()} job description? It mentions {fl.product()}.",
    lambda fl, r: f"{fl.date()} {fl.time()} INFO worker-{r.randint(1, 64)} processed {fl.num(5)} jobs in {r.randint(10, 999)} ms",
    lambda fl, r: f"Tracking number {fl.num(12)} was scanned at the depot.",
    lambda fl, r: f"Great Question! The {fl.product()} supports {fl.product()} out of the box.",
    lambda fl, r: f"Reminder: Quarterly Review moved to {fl.weekday()} at {fl.time()}.",
    lambda fl, r: f"Total: {fl.price()} (incl. VAT). Invoice INV-{fl.num(6)} is due in 30 days.",
    lambda fl, r: f"Best Practices for {fl.phrase()} - chapter {r.randint(1, 20)}",
    lambda fl, r: f"Which is faster, {fl.product()} or {fl.product()}?",
    lambda fl, r: f"Recipe of the Week: {fl.dish()}. Serves {r.randint(2, 8)}.",
    lambda fl, r: f'{{"status": "ok", "version": "{fl.version()}", "items": {r.randint(0, 500)}}}',
    lambda fl, r: f"Welcome Aboard! Your {fl.maker()} subscription starts {fl.month()} {r.randint(1, 28)}.",
    lambda fl, r: f"Error {r.randint(400, 599)}: upstream timed out after {r.randint(1, 60)} s (request {fl.num(10)})",
]


# --------------------------------------------------------------------------------------
# Assembly and checks.
# --------------------------------------------------------------------------------------

def assemble(pieces):
    text, spans, pos = [], [], 0
    for v, t in pieces:
        if t is not None:
            spans.append({"type": t, "start": pos, "end": pos + len(v), "_v": v})
        text.append(v)
        pos += len(v)
    return "".join(text), spans


def check(text, spans):
    last = 0
    for sp in spans:
        assert text[sp["start"]:sp["end"]] == sp["_v"], (text, sp)
        assert sp["start"] >= last and sp["end"] > sp["start"], (text, spans)
        assert sp["_v"] == sp["_v"].strip(), ("untrimmed value", sp)
        before = text[sp["start"] - 1] if sp["start"] > 0 else " "
        after = text[sp["end"]] if sp["end"] < len(text) else " "
        assert not before.isalnum() and not after.isalnum(), ("span glued to a word", text, sp)
        last = sp["end"]


def build(split, seed, n, latin=True):
    rng = random.Random(seed)
    held = set(holdout_languages())
    if latin:
        pool = [(src, loc, FAKER_LATIN[loc] if src == "faker" else "name addr phone email")
                for src, loc in all_latin_locales()]
        if split == "dev":
            pool = [p for p in pool if lang_of(p[1]) not in held]
    else:
        pool = [("faker", loc, c) for loc, c in sorted(FAKER_NONLATIN.items())]
        pool += [("mimesis", loc, "name addr phone email") for loc in MIMESIS_NONLATIN]
    srcs = {}

    def get(src, loc, caps):
        key = (src, loc)
        if key not in srcs:
            srcs[key] = Src(src, loc, caps, rng, latin)
        return srcs[key]

    filler = Filler(rng.randrange(2 ** 31))
    templates = T if latin else [t for t in T if t[1] <= {"name", "addr", "city", "phone", "email", "dob", "card", "ip", "url"}]
    total_w = sum(w for _, _, w, _ in templates)
    rows = []
    while len(rows) < n:
        if rng.random() < NEG_SHARE:
            text = NEG_TEMPLATES[rng.randrange(len(NEG_TEMPLATES))](filler, rng)
            rows.append({"text": text, "spans": [], "meta": {"source": "none", "locale": None,
                                                             "template": "negative", "unseen_locale": False}})
            continue
        x = rng.random() * total_w
        for kind, needs, w, fn in templates:
            x -= w
            if x < 0:
                break
        cands = []
        for src, loc, caps in pool:
            c = set(caps.split()) | {"card", "cvv", "exp", "ip", "url", "dob"}
            if "name" in c:
                c.add("email")
            if "addr" in c:
                c.add("city")
            if needs <= c:
                cands.append((src, loc, caps))
        if not cands:
            continue
        src, loc, caps = cands[rng.randrange(len(cands))]
        s = get(src, loc, caps)
        try:
            pieces = fn(s, filler, s.rng)
        except Skip:
            continue
        if rng.random() < 0.2:  # a non-personal sentence around it, for precision
            extra = NEG_TEMPLATES[rng.randrange(len(NEG_TEMPLATES))](filler, rng)
            pieces = ([P(extra + " ")] + pieces) if rng.random() < 0.5 else (pieces + [P("\n" + extra)])
        text, spans = assemble(pieces)
        if not spans:
            continue
        if any('"' in sp["_v"] or "\\" in sp["_v"] for sp in spans):
            continue  # would need JSON escaping inside JSON-like templates
        try:
            check(text, spans)
        except AssertionError:
            raise
        rows.append({"text": text,
                     "spans": [{"type": sp["type"], "start": sp["start"], "end": sp["end"]} for sp in spans],
                     "meta": {"source": src, "locale": loc, "template": kind,
                              "unseen_locale": latin and lang_of(loc) in held}})
        for sp in spans:
            rows[-1].setdefault("_vals", []).append(sp["_v"])
    # final verification of every span against the inserted value
    for row in rows:
        vals = row.pop("_vals", [])
        assert len(vals) == len(row["spans"])
        for sp, v in zip(row["spans"], vals):
            assert row["text"][sp["start"]:sp["end"]] == v
    return rows


TYPES = {"PERSON", "LOCATION", "PHONE_NUMBER", "EMAIL_ADDRESS", "CREDIT_CARD", "CVV", "CARD_EXPIRY",
         "IBAN_CODE", "IP_ADDRESS", "US_SSN", "URL", "DATE_TIME"}


def validate(path):
    """Offsets inside the text, sorted, non-overlapping, known types, no blank edges."""
    n = 0
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            row = json.loads(line)
            text, last = row["text"], 0
            for sp in row["spans"]:
                assert sp["type"] in TYPES, (path, i, sp)
                assert last <= sp["start"] < sp["end"] <= len(text), (path, i, sp)
                v = text[sp["start"]:sp["end"]]
                assert v == v.strip(), (path, i, v)
                last = sp["end"]
            n += 1
    print(f"{path}: {n} lines OK")


def write(rows, path):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def summary(name, rows):
    c = Counter(sp["type"] for r in rows for sp in r["spans"])
    neg = sum(1 for r in rows if not r["spans"])
    locs = Counter((r["meta"]["source"], r["meta"]["locale"]) for r in rows if r["meta"]["locale"])
    unseen = sum(1 for r in rows if r["meta"]["unseen_locale"])
    print(f"{name}: {len(rows)} texts, {neg} without personal data, {unseen} from unseen-locale languages, "
          f"{len(locs)} locales")
    for t, k in sorted(c.items()):
        print(f"  {t:14s} {k}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["dev", "test", "nonlatin"])
    ap.add_argument("--seed", type=int)
    ap.add_argument("--n", type=int)
    ap.add_argument("--out")
    ap.add_argument("--list-locales", action="store_true")
    ap.add_argument("--check", nargs="+", metavar="FILE", help="only validate existing files")
    a = ap.parse_args()
    if a.check:
        for path in a.check:
            validate(path)
        return
    if faker.VERSION != FAKER_VERSION or mimesis.__version__ != MIMESIS_VERSION:
        print(f"warning: faker {faker.VERSION} / mimesis {mimesis.__version__} installed; the committed "
              f"files were made with faker {FAKER_VERSION} / mimesis {MIMESIS_VERSION}", file=sys.stderr)
    held = holdout_languages()
    if a.list_locales:
        print("held-out languages (test only):", " ".join(held))
        for src, loc in all_latin_locales():
            print(f"  {'TEST-ONLY' if lang_of(loc) in held else 'dev+test '} {src}:{loc}")
        return
    if a.split:
        defaults = {"dev": (11, 3000), "test": (12, 3000), "nonlatin": (13, 1000)}[a.split]
        seed = a.seed if a.seed is not None else defaults[0]
        n = a.n if a.n is not None else defaults[1]
        rows = build(a.split, seed, n, latin=a.split != "nonlatin")
        out = a.out or os.path.join(HERE, a.split + ".jsonl")
        write(rows, out)
        summary(out, rows)
        return
    for split, seed, n in (("dev", 11, 3000), ("test", 12, 3000), ("nonlatin", 13, 1000)):
        if a.seed is not None:
            seed = a.seed
        if a.n is not None:
            n = a.n
        rows = build(split, seed, n, latin=split != "nonlatin")
        out = os.path.join(HERE, split + ".jsonl")
        write(rows, out)
        summary(out, rows)


if __name__ == "__main__":
    main()
