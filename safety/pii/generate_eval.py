#!/usr/bin/env python3
"""Deterministic generator of a labelled synthetic PII evaluation set.

    python3 safety/pii/generate_eval.py            # writes safety/pii/eval.jsonl, then validates it
    python3 safety/pii/generate_eval.py --check    # only validates an existing file

Standard library only; every random choice comes from one random.Random(2026), and no
set or dict is iterated in a hash-dependent order, so the output is byte-identical on
every run (and every Python 3.7+).

Output: one JSON object per line,
    {"text": "...", "spans": [{"type": "EMAIL_ADDRESS", "start": 12, "end": 30}, ...]}
Offsets are Python string (Unicode code point) offsets, end exclusive, spans sorted by
start and never overlapping. Types are Microsoft Presidio entity names plus SECRET.

Labelling conventions (what a detector is scored against):
  * EMAIL_ADDRESS  the whole address; a name inside its local part is not a PERSON.
  * PHONE_NUMBER   from the "+" or first digit/parenthesis to the last digit; an
                   "ext. 12" suffix is outside the span.
  * CREDIT_CARD    Luhn-valid numbers of real brand prefixes and lengths, with their
                   internal spaces/dashes. "ending in 1234", expiry and CVV are not labelled.
  * IBAN_CODE      mod-97-valid IBANs, compact or grouped in fours. A BIC is not labelled.
  * IP_ADDRESS     IPv4 and IPv6 (full or "::"-compressed), without port or prefix length.
  * US_SSN         valid ranges only; invalid ones (000/666/9xx area, 00 group, 0000
                   serial) appear as unlabelled hard negatives.
  * URL            http(s):// or www. URLs with path/query; trailing sentence
                   punctuation is outside. Bare domains never appear unlabelled.
  * MAC_ADDRESS    colon, dash and Cisco-dot notations.
  * CRYPTO         Bitcoin (base58check P2PKH/P2SH, bech32 P2WPKH) and Ethereum
                   (0x + 40 hex) addresses. Transaction hashes are not labelled.
  * DATE_TIME      only dates of birth (context: born, DOB, date of birth, birthday,
                   birthdate); the date alone, not the cue word. All other dates,
                   times and years are unlabelled hard negatives.
  * PERSON         the name without any title ("Dr.", "Mr.") or "@"; a first and a last
                   name in separate CSV columns are two spans.
  * LOCATION       a street address is one span (street to postcode/city/state);
                   "Lyon, France" in prose is two spans; a bare postcode is unlabelled.
  * SECRET         API keys with known prefixes, AWS secret keys, and bearer/JWT/opaque
                   tokens after "token=", "Bearer " and similar; the key name is outside.
  Company names, product names, git SHAs, UUIDs, versions, prices, hex colours, order,
  invoice and tracking numbers (the long ones fail Luhn) are never labelled.
"""

import argparse
import base64
import hashlib
import json
import os
import random
import re
import string
import sys
import unicodedata
from collections import Counter

SEED = 2026
N_TEXTS = 3000
NEG_FRACTION = 0.30
MAX_ENTITIES = 4

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "eval.jsonl")

TYPES = [
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN",
    "URL", "MAC_ADDRESS", "CRYPTO", "DATE_TIME", "PERSON", "LOCATION", "SECRET",
]

R = random.Random(SEED)


def pick(seq):
    return seq[R.randrange(len(seq))]


def wpick(pairs):
    """pairs: list of (weight, value)."""
    total = sum(w for w, _ in pairs)
    x = R.random() * total
    for w, v in pairs:
        x -= w
        if x < 0:
            return v
    return pairs[-1][1]


def chance(p):
    return R.random() < p


def digits(n):
    return "".join(R.choice("0123456789") for _ in range(n))


def rs(alphabet, n):
    return "".join(R.choice(alphabet) for _ in range(n))


def uniq(seq):
    return list(dict.fromkeys(seq))


HEX = "0123456789abcdef"
ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits

# --------------------------------------------------------------------------------------
# Names. Each culture: first names, last names, share of "Family Given" order.
# --------------------------------------------------------------------------------------

CULTURES = [
    ("english",
     "James Olivia Liam Emma Noah Charlotte Oliver Amelia Henry Harper Ethan Grace Lucas "
     "Chloe Mason Madison Logan Abigail Jack Hannah Samuel Megan Grant Rose Mark Victoria "
     "Dylan Brooke Tyler Summer Owen Ruby Nathan Beverly",
     "Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Thomas Moore "
     "Jackson Martin Thompson White Harris Clark Lewis Robinson Walker Young Allen Wright "
     "Scott Green Baker Adams Nelson Hill Campbell Mitchell Carter Roberts Turner Phillips "
     "Parker Evans Edwards Collins Stewart Morris Cooper Reed Bailey Bell Cook Rogers "
     "Howard Ward Fisher Hughes Bennett",
     0.0),
    ("irish_scottish_welsh",
     "Siobhan Niamh Aoife Ciaran Padraig Saoirse Declan Eoin Fionnuala Ronan Callum Isla "
     "Eilidh Angus Rhys Cerys Dafydd Gwen",
     "O'Connor O'Brien O'Sullivan McCarthy Gallagher Byrne Kavanagh MacLeod McKenzie "
     "Fitzgerald Doherty Quinn Murphy Llewellyn Pritchard",
     0.0),
    ("hispanic",
     "José María Alejandro Lucía Javier Carmen Diego Valentina Mateo Camila Santiago Sofía "
     "Pablo Ximena Andrés Guadalupe Joaquín Paula Rodrigo Inés Catalina Fernando",
     "García Rodríguez Martínez Hernández López González Pérez Sánchez Ramírez Torres "
     "Flores Rivera Gómez Díaz Morales Ortiz Castillo Jiménez Ruiz Vargas Mendoza Navarro "
     "Domínguez Herrera",
     0.0),
    ("portuguese",
     "João Ana Thiago Beatriz Gonçalo Leonor Rafael Mariana Caio Larissa Vinícius",
     "Silva Santos Oliveira Souza Pereira Costa Ferreira Almeida Carvalho Rocha",
     0.0),
    ("french",
     "Jean-Luc Anne-Marie Camille Étienne Léa Mathieu Chloé Antoine Margaux Benoît Élodie "
     "Théo Amélie Guillaume Océane Baptiste",
     "Dubois Lefèvre Moreau Laurent Girard Fontaine Rousseau Bonnet Mercier Picard "
     "Chevalier Lambert Faure Durand Leclerc",
     0.0),
    ("german",
     "Lukas Anna Jürgen Lena Matthias Sabine Maximilian Katrin Felix Johanna Tobias Ursula "
     "Klaus Greta Florian Annika",
     "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Hoffmann Schäfer Koch "
     "Richter Klein Wolf Schröder Neumann Zimmermann Braun Krüger Hartmann",
     0.0),
    ("dutch",
     "Daan Sanne Bram Femke Joris Lotte Sem Anouk Pieter Maartje",
     "Jansen Bakker Visser Smit Mulder Bos Vos Dekker Hendriks Brouwer|van der Berg|de Vries|"
     "van Dijk|van den Heuvel|de Boer",
     0.0),
    ("nordic",
     "Søren Ingrid Lars Astrid Magnus Freja Bjørn Sigrid Henrik Linnea Erik Maja",
     "Hansen Johansson Nilsen Lindqvist Andersson Karlsson Nielsen Berg Eriksson Halvorsen "
     "Sørensen Lundgren",
     0.0),
    ("italian",
     "Giulia Alessandro Chiara Lorenzo Francesca Matteo Giorgia Davide Federica Giuseppe "
     "Elena Marco",
     "Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Bruno Gallo "
     "Conti Mancini Giordano Rizzo Lombardi D'Angelo|De Luca",
     0.0),
    ("slavic",
     "Łukasz Agnieszka Krzysztof Małgorzata Piotr Zofia Tomasz Katarzyna Jakub Tereza "
     "Ondřej Milena Dragan Jelena",
     "Kowalski Nowak Wiśniewski Wójcik Kamińska Lewandowski Zieliński Szymańska Dvořák "
     "Novák Svoboda Horvat Kovačević Petrović Jovanović",
     0.0),
    ("russian_ukrainian",
     "Dmitri Natalia Sergei Olga Alexei Yulia Ivan Svetlana Mykola Oksana Anastasia Vladimir",
     "Ivanov Petrova Smirnov Kuznetsova Popov Volkov Sokolova Shevchenko Kovalenko "
     "Bondarenko Morozov",
     0.0),
    ("greek",
     "Nikos Eleni Giorgos Katerina Dimitris Sofia Yannis Despina",
     "Papadopoulos Georgiou Nikolaidis Konstantinou Pappas Christodoulou",
     0.0),
    ("turkish",
     "Emre Elif Mehmet Zeynep Burak Ayşe Deniz Oğuz Selin Kerem",
     "Yılmaz Kaya Demir Şahin Çelik Yıldız Aydın Öztürk Arslan Doğan",
     0.0),
    ("arabic",
     "Mohammed Fatima Ahmed Aisha Omar Layla Youssef Mariam Khalid Noor Hassan Amira Tariq "
     "Yasmin Karim Salma",
     "Al-Sayed Haddad Khoury Nasser Mansour Hamdan Aziz Farouk Saleh Abdullah Al-Rashid "
     "El-Amin Bakr Khalil",
     0.0),
    ("persian",
     "Dariush Shirin Reza Parisa Kaveh Nasrin Arash Leila",
     "Hosseini Karimi Ahmadi Moradi Tehrani Jafari Rostami",
     0.0),
    ("hebrew",
     "Avi Noa Yael Eitan Tamar Ori Shira",
     "Cohen Levi Mizrahi Friedman Katz Peretz Ben-David",
     0.0),
    ("indian",
     "Anika Arjun Priya Rohan Aditya Kavya Vikram Deepika Rahul Sneha Sanjay Lakshmi "
     "Karthik Divya Arun Meera Harpreet Gurpreet Aarav Ishaan Sunita Ramesh Pooja Nikhil",
     "Sharma Patel Singh Kumar Gupta Reddy Iyer Nair Menon Chatterjee Banerjee Mukherjee "
     "Desai Joshi Rao Pillai Krishnan Agarwal Malhotra Kapoor Bhattacharya Verma Mehta "
     "Subramanian Naidu Sandhu Gill Dhillon",
     0.0),
    ("pakistani_bangladeshi",
     "Imran Ayesha Bilal Sana Farhan Nusrat Tanvir Rubina",
     "Khan Qureshi Chaudhry Hussain Akhtar Rahim Chowdhury Rahman",
     0.0),
    ("chinese",
     "Wei Jing Hao Mei Xiaoming Yan Jun Xin Lei Fang Zhiwei Yuting Qiang Hui Ming",
     "Wang Li Zhang Liu Chen Yang Huang Zhao Wu Zhou Xu Sun Zhu Hu Guo Lin Gao Luo Tan Lim "
     "Ng Wong Chan Leung Cheung",
     0.6),
    ("japanese",
     "Haruto Yui Sota Hina Ren Aoi Kenji Yuki Takeshi Sakura Hiroshi Emi",
     "Sato Suzuki Takahashi Tanaka Watanabe Ito Yamamoto Nakamura Kobayashi Kato Yoshida "
     "Yamada Matsumoto",
     0.25),
    ("korean",
     "Minjun Seoyeon Jiho Hayoon Jisoo Dongmin Eunji Hyun-woo Soo-ah",
     "Kim Lee Park Choi Jung Kang Cho Yoon Jang Han",
     0.6),
    ("vietnamese",
     "Minh Linh Thanh Huong Duc Trang Quang",
     "Nguyễn Trần Lê Phạm Hoàng Vũ Đặng Bùi Nguyen Tran Pham",
     0.6),
    ("southeast_asian",
     "Somchai Nattaya Ploy Arnel Maricel Jericho Rizal Putri Budi Siti Ayu Hafiz Nurul",
     "Srisai Chaiyaporn Wongsakul Reyes Cruz Bautista Villanueva Santoso Wijaya Hidayat "
     "Kusuma Siregar|Dela Cruz",
     0.0),
    ("african",
     "Chinedu Ngozi Oluwaseun Adaeze Emeka Funmilayo Kwame Ama Kofi Akosua Tunde Yetunde "
     "Amara Obinna Zainab Musa Wanjiru Kamau Njeri Otieno Abebe Tigist Thabo Lerato Sipho "
     "Nomvula Amadou Fatou Moussa Aminata",
     "Okafor Adeyemi Okonkwo Balogun Eze Nwosu Mensah Boateng Owusu Asante Odhiambo Mwangi "
     "Kiprop Tesfaye Bekele Haile Ndlovu Dlamini Nkosi Mokoena Diallo Traoré Keita "
     "Coulibaly Diop Ndiaye Abubakar Bello",
     0.0),
    ("pacific",
     "Kai Leilani Keanu Aroha Tane Mele",
     "Kealoha Ngata Tuilagi Kahananui Fonoti",
     0.0),
]


def _split_names(s):
    # "A B C|multi word|other multi" -> single-word names, then multi-word ones
    parts = s.split("|")
    return parts[0].split() + [p.strip() for p in parts[1:]]


CULTURE_TABLE = []
for _name, _firsts, _lasts, _eastern in CULTURES:
    CULTURE_TABLE.append((_name, uniq(_split_names(_firsts)), uniq(_split_names(_lasts)), _eastern))

ALL_FIRST = uniq(n for _, fs, _, _ in CULTURE_TABLE for n in fs)
ALL_LAST = uniq(n for _, _, ls, _ in CULTURE_TABLE for n in ls)

TITLES = ["Mr.", "Ms.", "Mrs.", "Dr.", "Prof.", "Mr", "Ms", "Dr"]

TRANSLIT = {"ø": "o", "ł": "l", "ß": "ss", "đ": "d", "æ": "ae", "ı": "i", "œ": "oe", "Ø": "O",
            "Ł": "L", "Đ": "D"}


def ascii_fold(s):
    s = "".join(TRANSLIT.get(c, c) for c in s)
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if c.isascii() and (c.isalnum()))


class Persona:
    def __init__(self):
        _, firsts, lasts, eastern = pick(CULTURE_TABLE)
        self.first = pick(firsts)
        # a fifth of people carry a surname from another culture
        self.last = pick(lasts) if chance(0.8) else pick(ALL_LAST)
        self.eastern = chance(eastern)

    def full(self, middle_ok=True):
        if self.eastern:
            return f"{self.last} {self.first}"
        if middle_ok and chance(0.08):
            return f"{self.first} {pick(string.ascii_uppercase)}. {self.last}"
        return f"{self.first} {self.last}"


def gen_person(var, ctx):
    if var in ("p_first", "p_last", "p_full") and ctx.get("person") is not None:
        p = ctx["person"]
        return {"p_first": p.first, "p_last": p.last, "p_full": p.full(False)}[var]
    p = Persona()
    ctx["person"] = p
    if var in ("", "full", "p_full"):
        return p.full()
    if var in ("first", "p_first"):
        return p.first
    if var in ("last", "p_last"):
        return p.last
    if var == "lower":
        return p.full(False).lower()
    if var == "first_lower":
        return p.first.lower()
    if var == "any":
        return wpick([(6, p.full()), (3, p.first), (1, p.full(False).lower())])
    raise KeyError("PERSON:" + var)


# --------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------

US_CITIES = [
    ("San Francisco", "CA", "941"), ("Austin", "TX", "787"), ("Seattle", "WA", "981"),
    ("Chicago", "IL", "606"), ("Boston", "MA", "021"), ("Denver", "CO", "802"),
    ("Portland", "OR", "972"), ("Atlanta", "GA", "303"), ("Miami", "FL", "331"),
    ("Phoenix", "AZ", "850"), ("Brooklyn", "NY", "112"), ("New York", "NY", "100"),
    ("Nashville", "TN", "372"), ("Minneapolis", "MN", "554"), ("Columbus", "OH", "432"),
    ("Raleigh", "NC", "276"), ("Salt Lake City", "UT", "841"), ("Pittsburgh", "PA", "152"),
    ("Madison", "WI", "537"), ("Anchorage", "AK", "995"), ("Honolulu", "HI", "968"),
    ("Albuquerque", "NM", "871"), ("Sacramento", "CA", "958"), ("Charlotte", "NC", "282"),
]
US_STREETS = ["Main", "Oak", "Maple", "Cedar", "Pine", "Elm", "Washington", "Lake", "Hill",
              "Park", "Sunset", "Mission", "Valencia", "Market", "Lincoln", "Jefferson",
              "Highland", "Riverside", "Church", "Willow", "Franklin", "Magnolia", "Broadway",
              "Spring", "Chestnut", "Walnut", "Madison", "Jackson"]
US_SUFFIX = ["Street", "St", "Avenue", "Ave", "Boulevard", "Blvd", "Road", "Rd", "Drive", "Dr",
             "Lane", "Ln", "Way", "Court", "Ct", "Place"]
FAMOUS_ADDRESSES = [
    "221B Baker Street, London", "1600 Pennsylvania Ave NW, Washington, DC 20500",
    "10 Downing Street, London SW1A 2AA", "350 Fifth Avenue, New York, NY 10118",
    "Calle de Alcalá 42, 28014 Madrid", "12 rue de Rivoli, Paris",
    "Prinsengracht 263, 1016 GV Amsterdam", "1 Infinite Loop, Cupertino, CA 95014",
    "Unter den Linden 77, 10117 Berlin", "4059 Mt Lee Dr, Hollywood, CA 90068",
]
UK_CITIES = [
    ("London", ["SW1A", "NW1", "E2", "N7", "SE15", "W11", "EC1V", "WC2H"]),
    ("Manchester", ["M1", "M14", "M20"]), ("Leeds", ["LS6", "LS1"]), ("Bristol", ["BS8", "BS1"]),
    ("Edinburgh", ["EH3", "EH8"]), ("Glasgow", ["G12", "G3"]), ("Cardiff", ["CF10", "CF24"]),
    ("Belfast", ["BT9", "BT7"]), ("Birmingham", ["B15", "B1"]), ("Liverpool", ["L1", "L8"]),
    ("Oxford", ["OX1", "OX4"]), ("Cambridge", ["CB1", "CB2"]), ("Brighton", ["BN1", "BN2"]),
]
UK_STREETS = ["Baker", "Station", "High", "Church", "Victoria", "Mill", "Albert", "Queens",
              "Kings", "Park", "Manor", "Grange", "Elm", "Beech", "Springfield", "Westbourne"]
UK_SUFFIX = ["Road", "Street", "Lane", "Avenue", "Close", "Crescent", "Gardens", "Terrace"]
DE_CITIES = [("Berlin", ["10", "12", "13"]), ("München", ["80", "81"]), ("Hamburg", ["20", "22"]),
             ("Köln", ["50", "51"]), ("Frankfurt am Main", ["60"]), ("Stuttgart", ["70"]),
             ("Düsseldorf", ["40"]), ("Leipzig", ["04"]), ("Dresden", ["01"]), ("Nürnberg", ["90"])]
DE_STREETS = ["Hauptstraße", "Bahnhofstraße", "Schillerstraße", "Goethestraße", "Lindenallee",
              "Berliner Straße", "Friedrichstraße", "Kastanienweg", "Am Markt", "Gartenstraße",
              "Torstraße", "Karl-Marx-Allee", "Sonnenallee", "Leopoldstraße", "Königsallee"]
FR_CITIES = [("Paris", None), ("Lyon", "6900"), ("Marseille", "1300"), ("Toulouse", "3100"),
             ("Bordeaux", "3300"), ("Lille", "5900"), ("Nantes", "4400"), ("Strasbourg", "6700"),
             ("Nice", "0600"), ("Montpellier", "3400")]
FR_STREETS = ["rue de Rivoli", "rue de la Paix", "avenue des Champs-Élysées",
              "boulevard Saint-Germain", "rue Victor Hugo", "rue du Faubourg Saint-Honoré",
              "rue de la République", "quai des Chartrons", "rue Sainte-Catherine",
              "avenue Jean Jaurès", "rue Lafayette", "place Bellecour"]
ES_CITIES = [("Madrid", "280"), ("Barcelona", "080"), ("Valencia", "460"), ("Sevilla", "410"),
             ("Málaga", "290"), ("Bilbao", "480"), ("Zaragoza", "500")]
ES_STREETS = ["Calle de Alcalá", "Calle Mayor", "Gran Vía", "Calle de Serrano",
              "Paseo de la Castellana", "Avenida de la Constitución", "Carrer de Mallorca",
              "Passeig de Gràcia", "Calle Larios", "Calle de Atocha"]
IT_CITIES = [("Roma", "001"), ("Milano", "201"), ("Napoli", "801"), ("Torino", "101"),
             ("Firenze", "501"), ("Bologna", "401")]
IT_STREETS = ["Via Roma", "Via Giuseppe Garibaldi", "Via del Corso", "Corso Vittorio Emanuele II",
              "Via Dante", "Piazza Navona", "Via Nazionale", "Via Toledo", "Via Mazzini"]
NL_CITIES = [("Amsterdam", "10"), ("Rotterdam", "30"), ("Utrecht", "35"), ("Den Haag", "25"),
             ("Eindhoven", "56"), ("Groningen", "97")]
NL_STREETS = ["Prinsengracht", "Keizersgracht", "Kalverstraat", "Coolsingel", "Oudegracht",
              "Damrak", "Witte de Withstraat", "Stationsweg", "Herengracht"]
IN_CITIES = [("Mumbai", "400", ["Andheri West", "Bandra West", "Powai"]),
             ("Bengaluru", "560", ["Indiranagar", "Koramangala", "Whitefield"]),
             ("New Delhi", "110", ["Hauz Khas", "Lajpat Nagar", "Saket"]),
             ("Chennai", "600", ["T. Nagar", "Adyar", "Velachery"]),
             ("Hyderabad", "500", ["Banjara Hills", "Gachibowli"]),
             ("Pune", "411", ["Koregaon Park", "Kothrud"])]
IN_ROADS = ["MG Road", "Link Road", "Station Road", "100 Feet Road", "Ring Road", "Nehru Street"]
CA_CITIES = [("Toronto", "ON", "M"), ("Vancouver", "BC", "V"), ("Montréal", "QC", "H"),
             ("Calgary", "AB", "T"), ("Ottawa", "ON", "K")]
AU_ADDR = [("George Street", "Sydney", "NSW", "2000"), ("Collins Street", "Melbourne", "VIC", "3000"),
           ("Adelaide Street", "Brisbane", "QLD", "4000"), ("Hay Street", "Perth", "WA", "6000"),
           ("Rundle Mall", "Adelaide", "SA", "5000")]
JP_ADDR = [("Shibuya", "Shibuya-ku", "Tokyo", "150"), ("Roppongi", "Minato-ku", "Tokyo", "106"),
           ("Shinjuku", "Shinjuku-ku", "Tokyo", "160"), ("Namba", "Chuo-ku", "Osaka", "542")]
BR_ADDR = [("Rua Oscar Freire", "São Paulo", "SP", "01426"), ("Avenida Paulista", "São Paulo", "SP", "01310"),
           ("Rua Visconde de Pirajá", "Rio de Janeiro", "RJ", "22410")]

OTHER_CITIES = [
    "Lagos", "Nairobi", "Accra", "Cairo", "Casablanca", "Johannesburg", "Cape Town", "Addis Ababa",
    "Dubai", "Istanbul", "Tehran", "Karachi", "Lahore", "Dhaka", "Colombo", "Jakarta", "Manila",
    "Bangkok", "Ho Chi Minh City", "Hanoi", "Seoul", "Busan", "Osaka", "Shanghai", "Beijing",
    "Shenzhen", "Taipei", "Singapore", "Kuala Lumpur", "Auckland", "Wellington",
    "Buenos Aires", "Lima", "Bogotá", "Mexico City", "Guadalajara", "Santiago", "Antwerp",
    "Brussels", "Zürich", "Geneva", "Vienna", "Prague", "Warsaw", "Kraków", "Budapest",
    "Bucharest", "Athens", "Lisbon", "Porto", "Dublin", "Cork", "Oslo", "Stockholm",
    "Copenhagen", "Helsinki", "Reykjavík", "Tallinn", "Riga", "Vilnius", "Kyiv", "Tbilisi",
    "Marrakesh", "Kigali", "Dakar", "Doha", "Tel Aviv", "Amman", "Beirut", "Chiang Mai",
]
CITIES = uniq([c for c, _, _ in US_CITIES] + [c for c, _ in UK_CITIES] + [c for c, _ in DE_CITIES]
              + [c for c, _ in FR_CITIES] + [c for c, _ in ES_CITIES] + [c for c, _ in IT_CITIES]
              + [c for c, _ in NL_CITIES] + [c for c, _, _ in IN_CITIES]
              + [c for c, _, _ in CA_CITIES] + [a[1] for a in AU_ADDR] + ["Tokyo", "São Paulo",
                                                                          "Rio de Janeiro"]
              + OTHER_CITIES)
COUNTRIES = [
    "Germany", "France", "Spain", "Italy", "the Netherlands", "Belgium", "Switzerland", "Austria",
    "Portugal", "Ireland", "Poland", "Sweden", "Norway", "Denmark", "Finland", "Greece", "Turkey",
    "Egypt", "Morocco", "Nigeria", "Kenya", "Ghana", "South Africa", "Ethiopia", "India",
    "Pakistan", "Bangladesh", "Sri Lanka", "China", "Japan", "South Korea", "Vietnam", "Thailand",
    "the Philippines", "Indonesia", "Malaysia", "Australia", "New Zealand", "Canada", "Mexico",
    "Brazil", "Argentina", "Chile", "Colombia", "Peru", "the United States", "the UK", "Scotland",
    "Wales", "Iceland", "Estonia", "Ukraine", "Georgia", "Israel", "Jordan", "Lebanon", "Qatar",
    "the UAE", "Rwanda", "Senegal",
]
REGIONS = ["California", "Texas", "Ontario", "Bavaria", "Catalonia", "Kerala", "Queensland",
           "Tuscany", "Brittany", "Andalusia", "Quebec", "Scotland", "Punjab", "Hokkaido",
           "Lombardy", "British Columbia", "Yorkshire", "Cornwall"]


def _country_word(c):
    # "the Netherlands" -> span is "Netherlands" only; the article stays outside
    return c[4:] if c.startswith("the ") else c


def uk_postcode(outward):
    return f"{outward} {R.randint(1, 9)}{rs('ABDEFGHJLNPQRSTUWXYZ', 2)}"


def ca_postal(first):
    L = "ABCEGHJKLMNPRSTVWXYZ"
    return f"{first}{R.randint(1, 9)}{R.choice(L)} {R.randint(1, 9)}{R.choice(L)}{R.randint(1, 9)}"


def gen_address(kind=None):
    kind = kind or wpick([(22, "us"), (13, "uk"), (10, "de"), (9, "fr"), (8, "es"), (6, "it"),
                          (6, "nl"), (8, "in"), (5, "ca"), (4, "au"), (3, "jp"), (2, "br"),
                          (4, "famous")])
    if kind == "famous":
        return pick(FAMOUS_ADDRESSES)
    if kind == "us":
        city, st, z = pick(US_CITIES)
        zipc = z + digits(2) + (("-" + digits(4)) if chance(0.15) else "")
        street = f"{R.randint(1, 9899)} {pick(US_STREETS)} {pick(US_SUFFIX)}"
        unit = wpick([(6, ""), (1, f", Apt {R.randint(1, 40)}{pick('ABCD')}"),
                      (1, f" Suite {R.randint(100, 999)}"), (1, f" #{R.randint(2, 99)}")])
        return f"{street}{unit}, {city}, {st} {zipc}"
    if kind == "uk":
        city, outs = pick(UK_CITIES)
        flat = f"Flat {R.randint(1, 12)}, " if chance(0.15) else ""
        s = f"{flat}{R.randint(1, 240)} {pick(UK_STREETS)} {pick(UK_SUFFIX)}, {city}"
        return s + (" " + uk_postcode(pick(outs)) if chance(0.75) else "")
    if kind == "de":
        city, pre = pick(DE_CITIES)
        pre = pick(pre)
        plz = pre + digits(5 - len(pre))
        return f"{pick(DE_STREETS)} {R.randint(1, 180)}{pick(['', '', '', 'a', 'b'])}, {plz} {city}"
    if kind == "fr":
        city, cp = pick(FR_CITIES)
        cp = ("750" + "%02d" % R.randint(1, 20)) if cp is None else cp + str(R.randint(0, 9) if cp != "0600" else 0)
        num = f"{R.randint(1, 180)}{pick(['', '', '', ' bis'])}"
        if chance(0.2):
            return f"{num} {pick(FR_STREETS)}, {city}"
        return f"{num} {pick(FR_STREETS)}, {cp} {city}"
    if kind == "es":
        city, cp = pick(ES_CITIES)
        floor = f", {R.randint(1, 8)}º {pick('ABCD')}" if chance(0.3) else ""
        return f"{pick(ES_STREETS)} {R.randint(1, 220)}{floor}, {cp}{digits(2)} {city}"
    if kind == "it":
        city, cap = pick(IT_CITIES)
        return f"{pick(IT_STREETS)} {R.randint(1, 150)}, {cap}{digits(2)} {city}"
    if kind == "nl":
        city, pc = pick(NL_CITIES)
        return f"{pick(NL_STREETS)} {R.randint(1, 400)}, {pc}{digits(2)} {rs('ABCDEGHJKLMNPRSTVWXZ', 2)} {city}"
    if kind == "in":
        city, pin, areas = pick(IN_CITIES)
        flat = pick([f"Flat {R.randint(101, 1204)}, ", f"{R.randint(1, 99)}/{R.randint(1, 9)}, ",
                     f"{R.randint(1, 400)}, "])
        return f"{flat}{pick(IN_ROADS)}, {pick(areas)}, {city} {pin}{digits(3)}"
    if kind == "ca":
        city, prov, first = pick(CA_CITIES)
        return f"{R.randint(1, 999)} {pick(US_STREETS)} {pick(['St', 'Street', 'Ave', 'Rd'])}, {city}, {prov} {ca_postal(first)}"
    if kind == "au":
        street, city, st, pc = pick(AU_ADDR)
        unit = f"Level {R.randint(2, 30)}, " if chance(0.2) else ""
        return f"{unit}{R.randint(1, 400)} {street}, {city} {st} {pc}"
    if kind == "jp":
        area, ward, city, pc = pick(JP_ADDR)
        return f"{R.randint(1, 4)}-{R.randint(1, 30)}-{R.randint(1, 20)} {area}, {ward}, {city} {pc}-{digits(4)}"
    if kind == "br":
        street, city, st, cep = pick(BR_ADDR)
        return f"{street} {R.randint(10, 2400)}, {city}, {st} {cep}-{digits(3)}"
    raise KeyError(kind)


def gen_location(var, ctx):
    if var in ("", "any"):
        var = wpick([(5, "city"), (2, "country"), (3, "addr")])
    if var == "city":
        return pick(CITIES)
    if var == "city_lower":
        return pick(CITIES).lower()
    if var == "country":
        return _country_word(pick(COUNTRIES))
    if var == "region":
        return pick(REGIONS)
    if var == "place":
        return wpick([(6, pick(CITIES)), (3, _country_word(pick(COUNTRIES))), (1, pick(REGIONS))])
    if var == "addr":
        return gen_address()
    if var.startswith("addr_"):
        return gen_address(var[5:])
    raise KeyError("LOCATION:" + var)


# --------------------------------------------------------------------------------------
# E-mail, phone, URL
# --------------------------------------------------------------------------------------

EMAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "hotmail.co.uk", "proton.me",
                 "icloud.com", "gmx.de", "web.de", "orange.fr", "libero.it", "example.com",
                 "example.org", "acme-corp.com", "contoso.com", "fabrikam.io", "globex.net",
                 "initech.co", "northwind.dev", "rediffmail.com", "naver.com", "qq.com",
                 "uni-heidelberg.de", "student.uva.nl", "mail.example.co.jp", "posteo.net"]
ROLE_LOCALS = ["support", "billing", "hr", "info", "noreply", "admin", "security", "sales",
               "accounts", "helpdesk"]


def gen_email(var, ctx):
    if var == "role":
        return f"{pick(ROLE_LOCALS)}@{pick(EMAIL_DOMAINS[10:])}"
    p = ctx.get("person") if var == "p" else None
    if p is None:
        if chance(0.08):
            return f"{pick(ROLE_LOCALS)}@{pick(EMAIL_DOMAINS[10:])}"
        p = Persona()
    f, l = ascii_fold(p.first).lower(), ascii_fold(p.last).lower()
    local = wpick([
        (5, f"{f}.{l}"), (3, f"{f[0]}{l}"), (2, f"{f}_{l}{digits(2)}"), (2, f"{f}{R.randint(1, 99)}"),
        (1, f"{l}.{f}"), (1, f"{f}+{pick(['shop', 'news', 'work', 'test'])}"), (1, f"{f}.{l}{R.randint(70, 99)}"),
        (1, f"{f[0]}.{l}"), (1, f"{l}{f[0]}"),
    ])
    dom = pick(EMAIL_DOMAINS)
    addr = f"{local}@{dom}"
    return addr if not chance(0.05) else addr[0].upper() + addr[1:]


def _us_parts():
    area = pick(["415", "212", "646", "312", "617", "206", "512", "303", "404", "305", "702",
                 "808", "213", "718", "202", "919", "971", "612", "615", "801", "267", "503"])
    if chance(0.6):
        ex, line = "555", "01" + digits(2)
    else:
        ex, line = str(R.randint(2, 9)) + digits(2), digits(4)
    return area, ex, line


def phone_us():
    a, e, l = _us_parts()
    return wpick([
        (5, f"({a}) {e}-{l}"), (5, f"{a}-{e}-{l}"), (2, f"{a}.{e}.{l}"), (3, f"+1 {a} {e} {l}"),
        (2, f"+1 ({a}) {e}-{l}"), (2, f"+1-{a}-{e}-{l}"), (1, f"1-{a}-{e}-{l}"), (1, f"+1 {a}-{e}-{l}"),
    ])


def phone_intl(country=None):
    c = country or wpick([(4, "uk"), (3, "de"), (3, "fr"), (3, "in"), (2, "es"), (2, "nl"),
                          (2, "it"), (2, "jp"), (2, "au"), (2, "br"), (1, "ie"), (1, "za")])
    if c == "uk":
        return wpick([
            (3, f"+44 20 7946 0{digits(3)}"), (3, f"020 7946 0{digits(3)}"),
            (2, f"+44 7700 900{digits(3)}"), (2, f"07700 900{digits(3)}"),
            (1, f"+44 161 496 0{digits(3)}"), (1, f"0161 496 0{digits(3)}"),
            (1, f"+44 (0)20 7946 0{digits(3)}"),
        ])
    if c == "de":
        return wpick([
            (3, f"+49 30 {digits(8)}"), (2, f"030 {digits(8)}"), (2, f"+49 151 {digits(8)}"),
            (1, f"+49 (0)89 {digits(7)}"), (1, f"089 {digits(7)}"), (1, f"+49 40 {digits(3)} {digits(5)}"),
        ])
    if c == "fr":
        d = R.randint(1, 9)
        g = " ".join(digits(2) for _ in range(4))
        return wpick([(3, f"+33 {d} {g}"), (3, f"0{d} {g}"), (1, f"+33 (0){d} {g}"),
                      (1, "0" + str(d) + "." + g.replace(" ", "."))])
    if c == "in":
        first = str(R.randint(7, 9)) + digits(4)
        last = digits(5)
        return wpick([(4, f"+91 {first} {last}"), (2, f"+91-{first}-{last}"), (1, f"+91 {first}{last}"),
                      (1, f"0{first} {last}")])
    if c == "es":
        return wpick([(2, f"+34 6{digits(2)} {digits(3)} {digits(3)}"), (1, f"+34 91 {digits(3)} {digits(2)} {digits(2)}"),
                      (1, f"6{digits(2)} {digits(3)} {digits(3)}")])
    if c == "nl":
        return wpick([(2, f"+31 20 {digits(3)} {digits(4)}"), (2, f"+31 6 {digits(8)}"), (1, f"06-{digits(8)}")])
    if c == "it":
        return wpick([(2, f"+39 06 {digits(4)} {digits(4)}"), (2, f"+39 3{digits(2)} {digits(3)} {digits(4)}")])
    if c == "jp":
        return wpick([(2, f"+81 3-{digits(4)}-{digits(4)}"), (1, f"03-{digits(4)}-{digits(4)}"),
                      (1, f"+81 90-{digits(4)}-{digits(4)}")])
    if c == "au":
        return wpick([(2, f"+61 2 {digits(4)} {digits(4)}"), (2, f"+61 4{digits(2)} {digits(3)} {digits(3)}"),
                      (1, f"(02) {digits(4)} {digits(4)}"), (1, f"04{digits(2)} {digits(3)} {digits(3)}")])
    if c == "br":
        return wpick([(2, f"+55 11 9{digits(4)}-{digits(4)}"), (1, f"(21) 9{digits(4)}-{digits(4)}")])
    if c == "ie":
        return f"+353 1 {digits(3)} {digits(4)}"
    if c == "za":
        return f"+27 21 {digits(3)} {digits(4)}"
    raise KeyError(c)


def gen_phone(var, ctx):
    if var == "us":
        return phone_us()
    if var == "intl":
        return phone_intl()
    if var in ("uk", "de", "fr", "in"):
        return phone_intl(var)
    return phone_us() if chance(0.45) else phone_intl()


URL_DOMAINS = ["example.com", "example.org", "docs.example.com", "acme-corp.com", "shop.contoso.com",
               "status.fabrikam.io", "portal.globex.net", "help.initech.co", "api.northwind.dev",
               "blog.example.net", "secure-account-verify.com", "wiki.example.co.uk", "github.com",
               "gitlab.com", "en.wikipedia.org", "stackoverflow.com", "tracking.parcel-express.eu",
               "login.microsoftonline.com", "drive.google.com", "forms.example.edu"]
URL_SEGS = ["account", "settings", "orders", "invoices", "docs", "api", "v1", "v2", "users",
            "reset-password", "help", "articles", "download", "releases", "latest", "en", "de",
            "products", "search", "login", "callback", "track", "blog", "2024", "pricing",
            "issues", "kb", "getting-started", "billing", "faq", "returns", "careers", "status"]
URL_QUERIES = ["?id=" + "{n}", "?q=router+reset", "?utm_source=newsletter&utm_medium=email",
               "?page=2&sort=desc", "?lang=en", "?ref=support", "?tab=security", "?view=list&limit=50",
               "?session=expired", "?step=3"]


def gen_url(var, ctx):
    dom = pick(URL_DOMAINS)
    path = "/".join(R.sample(URL_SEGS, wpick([(1, 0), (4, 1), (4, 2), (2, 3)])))
    if path and chance(0.15):
        path += pick([".html", ".pdf", ".php"])
    q = pick(URL_QUERIES).replace("{n}", str(R.randint(10, 99999))) if chance(0.35) else ""
    frag = pick(["#faq", "#section-3", "#pricing", "#top"]) if chance(0.07) else ""
    tail = ("/" + path if path else ("/" if (q or frag or chance(0.3)) else "")) + q + frag
    if tail == "" and var == "api":
        tail = "/v1/me"
    if var == "api":
        dom = pick(["api.example.com", "api.northwind.dev", "api.acme-corp.com", "api.fabrikam.io"])
        return f"https://{dom}/{pick(['v1', 'v2', 'v3'])}/{pick(['users', 'orders', 'me', 'charges', 'events'])}"
    style = wpick([(7, "https"), (2, "http"), (2, "www")])
    if style == "www" and dom.count(".") == 1:
        return f"www.{dom}{tail if tail else '/' + pick(URL_SEGS)}"
    if style == "www":
        style = "https"
    if style == "https" and dom.count(".") == 1 and chance(0.4):
        dom = "www." + dom
    return f"{style}://{dom}{tail}"


# --------------------------------------------------------------------------------------
# Cards, IBANs, SSNs, IPs, MACs, crypto, secrets, dates of birth
# --------------------------------------------------------------------------------------

def luhn_ok(num):
    ds = [int(c) for c in num if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(ds)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_complete(partial):
    for c in "0123456789":
        if luhn_ok(partial + c):
            return partial + c
    raise AssertionError


CARD_BRANDS = {
    "visa": (lambda: "4", 16, (4, 4, 4, 4)),
    "mc": (lambda: str(R.randint(51, 55)), 16, (4, 4, 4, 4)),
    "mc2": (lambda: str(R.randint(2221, 2720)), 16, (4, 4, 4, 4)),
    "amex": (lambda: pick(["34", "37"]), 15, (4, 6, 5)),
    "discover": (lambda: pick(["6011", "65", "644", "649"]), 16, (4, 4, 4, 4)),
    "jcb": (lambda: str(R.randint(3528, 3589)), 16, (4, 4, 4, 4)),
    "diners": (lambda: "36", 14, (4, 6, 4)),
}


def group(s, sizes, sep):
    out, i = [], 0
    for n in sizes:
        out.append(s[i:i + n])
        i += n
    return sep.join(out)


def gen_card(var, ctx):
    brand = var if var in CARD_BRANDS else wpick([(8, "visa"), (4, "mc"), (2, "mc2"), (3, "amex"),
                                                  (2, "discover"), (2, "jcb"), (1, "diners")])
    if var == "mastercard":
        brand = pick(["mc", "mc", "mc2"])
    prefix_fn, length, sizes = CARD_BRANDS[brand]
    body = prefix_fn()
    body += digits(length - len(body) - 1)
    num = luhn_complete(body)
    sep = "" if var == "plain" else wpick([(5, " "), (3, "-"), (3, "")])
    return group(num, sizes, sep) if sep else num


IBAN_SPECS = {
    "DE": ["8n", "10n"], "GB": ["4b", "6n", "8n"], "FR": ["5n", "5n", "11c", "2n"],
    "ES": ["4n", "4n", "2n", "10n"], "NL": ["4b", "10n"], "IT": ["1a", "5n", "5n", "12c"],
    "CH": ["5n", "12c"], "BE": ["3n", "7n", "2n"], "AT": ["5n", "11n"], "PL": ["8n", "16n"],
    "PT": ["4n", "4n", "11n", "2n"], "IE": ["4b", "6n", "8n"], "SE": ["3n", "16n", "1n"],
    "NO": ["4n", "6n", "1n"], "DK": ["4n", "9n", "1n"], "FI": ["3n", "11n"], "LU": ["3n", "13c"],
    "AE": ["3n", "16n"], "TR": ["5n", "1n", "16c"],
}
IBAN_LENGTHS = {"DE": 22, "GB": 22, "FR": 27, "ES": 24, "NL": 18, "IT": 27, "CH": 21, "BE": 16,
                "AT": 20, "PL": 28, "PT": 25, "IE": 22, "SE": 24, "NO": 15, "DK": 18, "FI": 18,
                "LU": 20, "AE": 23, "TR": 26}
BANK_CODES = {"GB": ["NWBK", "BARC", "HBUK", "LOYD", "MIDL", "MONZ"], "IE": ["AIBK", "BOFI", "IPBS"],
              "NL": ["ABNA", "INGB", "RABO", "TRIO", "KNAB", "BUNQ"]}


def iban_check_digits(country, bban):
    s = bban + country + "00"
    n = int("".join(str(int(ch, 36)) for ch in s))
    return "%02d" % (98 - n % 97)


def iban_valid(iban):
    s = iban.replace(" ", "")
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]+", s):
        return False
    if s[:2] in IBAN_LENGTHS and len(s) != IBAN_LENGTHS[s[:2]]:
        return False
    r = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in r)) % 97 == 1


def gen_iban(var, ctx):
    country = wpick([(5, "DE"), (4, "GB"), (4, "FR"), (3, "ES"), (3, "NL"), (3, "IT"), (2, "CH"),
                     (1, "BE"), (1, "AT"), (1, "PL"), (1, "PT"), (1, "IE"), (1, "SE"), (1, "NO"),
                     (1, "DK"), (1, "FI"), (1, "LU"), (1, "AE"), (1, "TR")])
    bban = ""
    for part in IBAN_SPECS[country]:
        n, kind = int(part[:-1]), part[-1]
        if kind == "n":
            bban += digits(n)
        elif kind == "a":
            bban += rs(string.ascii_uppercase, n)
        elif kind == "b":
            bban += pick(BANK_CODES[country])
        else:
            bban += "".join(R.choice(string.ascii_uppercase) if chance(0.06) else R.choice(string.digits)
                            for _ in range(n))
    iban = country + iban_check_digits(country, bban) + bban
    assert len(iban) == IBAN_LENGTHS[country] and iban_valid(iban), iban
    compact = var == "compact" or (var != "grouped" and chance(0.4))
    return iban if compact else " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))


def ssn_valid(s):
    m = re.fullmatch(r"(\d{3})[- ](\d{2})[- ](\d{4})", s)
    if not m:
        return False
    a, g, n = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return a != 0 and a != 666 and a < 900 and g != 0 and n != 0


def gen_ssn(var, ctx):
    while True:
        area = R.randint(1, 899)
        if area != 666:
            break
    s = "%03d%s%02d%s%04d"
    sep = " " if (var == "space" or (var == "" and chance(0.2))) else "-"
    out = s % (area, sep, R.randint(1, 99), sep, R.randint(1, 9999))
    assert ssn_valid(out)
    return out


def bad_ssn():
    kind = pick(["000", "666", "9xx", "g00", "s0000"])
    a, g, n = R.randint(1, 665), R.randint(1, 99), R.randint(1, 9999)
    if kind == "000":
        a = 0
    elif kind == "666":
        a = 666
    elif kind == "9xx":
        a = R.randint(900, 999)
    elif kind == "g00":
        g = 0
    else:
        n = 0
    out = "%03d-%02d-%04d" % (a, g, n)
    assert not ssn_valid(out)
    return out


def v6_compress(groups):
    hexes = ["%x" % g for g in groups]
    best_s, best_l, i = -1, 0, 0
    while i < 8:
        if groups[i] == 0:
            j = i
            while j < 8 and groups[j] == 0:
                j += 1
            if j - i > best_l:
                best_s, best_l = i, j - i
            i = j
        else:
            i += 1
    if best_l >= 2:
        return ":".join(hexes[:best_s]) + "::" + ":".join(hexes[best_s + best_l:])
    return ":".join(hexes)


def gen_ipv4(kind=None):
    kind = kind or wpick([(5, "public"), (2, "10"), (2, "192"), (1, "172")])
    if kind == "10":
        return f"10.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"
    if kind == "192":
        return f"192.168.{R.randint(0, 20)}.{R.randint(1, 254)}"
    if kind == "172":
        return f"172.{R.randint(16, 31)}.{R.randint(0, 255)}.{R.randint(1, 254)}"
    while True:
        a = R.randint(1, 223)
        if a not in (10, 127, 172, 192, 169, 100):
            break
    return f"{a}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"


def gen_ipv6():
    style = wpick([(3, "full"), (5, "compressed"), (1, "loopback"), (2, "linklocal")])
    if style == "loopback":
        return "::1"
    if style == "linklocal":
        g = [0xfe80, 0, 0, 0] + [R.randrange(65536) for _ in range(4)]
        return v6_compress(g)
    g = [0x2001, 0x0db8] if chance(0.5) else [pick([0x2a00, 0x2606, 0x2400, 0x2804, 0x2c0f]), R.randrange(65536)]
    g += [R.randrange(65536) for _ in range(6)]
    if style == "full":
        s = ":".join("%04x" % x for x in g)
        return s.upper() if chance(0.2) else s
    zs = R.randint(2, 5)
    start = R.randint(2, 8 - zs)
    for i in range(start, start + zs):
        g[i] = 0
    if chance(0.3):
        g[3:7] = [0, 0, 0, 0]
    return v6_compress(g)


def gen_ip(var, ctx):
    if var == "v4":
        return gen_ipv4()
    if var == "private":
        return gen_ipv4(pick(["10", "192", "172"]))
    if var == "public":
        return gen_ipv4("public")
    if var == "v6":
        return gen_ipv6()
    return gen_ipv4() if chance(0.65) else gen_ipv6()


def gen_mac(var, ctx):
    b = [R.randrange(256) for _ in range(6)]
    b[0] &= 0xFE
    hx = ["%02x" % x for x in b]
    style = wpick([(7, "colon_up"), (4, "colon_low"), (3, "dash_low"), (3, "dash_up"), (3, "cisco")])
    if style == "colon_up":
        return ":".join(hx).upper()
    if style == "colon_low":
        return ":".join(hx)
    if style == "dash_low":
        return "-".join(hx)
    if style == "dash_up":
        return "-".join(hx).upper()
    h = "".join(hx)
    return f"{h[0:4]}.{h[4:8]}.{h[8:12]}"


B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def b58check(version, payload):
    data = bytes([version]) + payload
    full = data + hashlib.sha256(hashlib.sha256(data).digest()).digest()[:4]
    n = int.from_bytes(full, "big")
    s = ""
    while n:
        n, r = divmod(n, 58)
        s = B58[r] + s
    pad = len(full) - len(full.lstrip(b"\0"))
    return "1" * pad + s


def b58check_valid(addr):
    n = 0
    for c in addr:
        n = n * 58 + B58.index(c)
    pad = len(addr) - len(addr.lstrip("1"))
    raw = b"\0" * pad + (n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b"")
    return len(raw) == 25 and hashlib.sha256(hashlib.sha256(raw[:-4]).digest()).digest()[:4] == raw[-4:]


def _bech32_polymod(values):
    gen = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3]
    chk = 1
    for v in values:
        b = chk >> 25
        chk = ((chk & 0x1ffffff) << 5) ^ v
        for i in range(5):
            chk ^= gen[i] if ((b >> i) & 1) else 0
    return chk


def _hrp_expand(hrp):
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data, frombits, tobits):
    acc, bits, ret, maxv = 0, 0, [], (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            ret.append((acc >> bits) & maxv)
    if bits:
        ret.append((acc << (tobits - bits)) & maxv)
    return ret


def bech32_address(program):
    data = [0] + _convertbits(program, 8, 5)
    pm = _bech32_polymod(_hrp_expand("bc") + data + [0] * 6) ^ 1
    chk = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return "bc1" + "".join(BECH32[d] for d in data + chk)


def bech32_valid(addr):
    data = [BECH32.index(c) for c in addr[3:]]
    return addr.startswith("bc1") and _bech32_polymod(_hrp_expand("bc") + data) == 1


def gen_crypto(var, ctx):
    kind = var if var in ("btc", "eth", "bech32", "legacy") else wpick([(5, "btc"), (3, "eth")])
    if kind == "btc":
        kind = wpick([(3, "legacy"), (2, "bech32")])
    if kind == "eth":
        return "0x" + rs(HEX, 40)
    payload = bytes(R.randrange(256) for _ in range(20))
    if kind == "bech32":
        a = bech32_address(payload)
        assert len(a) == 42 and bech32_valid(a)
        return a
    a = b58check(pick([0, 0, 5]), payload)
    assert 26 <= len(a) <= 35 and a[0] in "13" and b58check_valid(a), a
    return a


def _b64url(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def gen_secret(var, ctx):
    kind = var or wpick([(3, "openai"), (2, "openai_proj"), (3, "github"), (3, "aws"), (2, "slack"),
                         (2, "google"), (2, "gitlab"), (2, "stripe"), (3, "bearer"), (2, "token")])
    if kind == "openai":
        return "sk-" + rs(ALNUM, 48)
    if kind == "openai_proj":
        return "sk-proj-" + rs(ALNUM + "-_", pick([48, 56, 64, 74, 92]))
    if kind == "github":
        return "ghp_" + rs(ALNUM, 36) if chance(0.8) else "github_pat_" + rs(UPPER_DIGITS, 22) + "_" + rs(ALNUM, 59)
    if kind == "aws":
        return pick(["AKIA", "AKIA", "AKIA", "ASIA"]) + rs(UPPER_DIGITS, 16)
    if kind == "aws_secret":
        return rs(ALNUM + "/+", 40)
    if kind == "slack":
        return f"{pick(['xoxb', 'xoxb', 'xoxp'])}-{digits(12)}-{digits(13)}-{rs(ALNUM, 24)}"
    if kind == "google":
        return "AIza" + rs(ALNUM + "-_", 35)
    if kind == "gitlab":
        return "glpat-" + rs(ALNUM + "-_", 20)
    if kind == "stripe":
        return pick(["sk_live_", "sk_live_", "rk_live_", "sk_test_"]) + rs(ALNUM, pick([24, 32, 99]))
    if kind == "jwt":
        head = _b64url({"alg": pick(["HS256", "RS256"]), "typ": "JWT"})
        body = _b64url({"sub": f"usr_{R.randint(1000, 99999)}", "iat": R.randint(1700000000, 1760000000),
                        "scope": pick(["read", "read write", "admin"])})
        return f"{head}.{body}.{rs(ALNUM + '-_', 43)}"
    if kind == "bearer":
        return gen_secret(wpick([(2, "jwt"), (2, "opaque"), (1, "openai")]), ctx)
    if kind == "opaque":
        return rs(ALNUM + "-_", pick([32, 40, 48]))
    if kind == "token":
        return wpick([(2, rs(HEX, pick([32, 64]))), (2, rs(ALNUM, pick([24, 32, 40]))),
                      (1, rs(ALNUM + "-_", 43))])
    raise KeyError("SECRET:" + kind)


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


def _ordinal(d):
    return f"{d}{'th' if 11 <= d <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d % 10, 'th')}"


def gen_dob(var, ctx):
    y = R.randint(1938, 2012)
    m = R.randint(1, 12)
    d = R.randint(1, 28 if m == 2 else (30 if m in (4, 6, 9, 11) else 31))
    mn = MONTHS[m - 1]
    fmt = var or wpick([(4, "dmy_long"), (3, "mdy_long"), (3, "us"), (3, "eu"), (3, "iso"), (2, "dot"),
                        (1, "ord"), (1, "short_mon"), (1, "us_short")])
    if fmt == "dmy_long":
        return f"{d} {mn} {y}"
    if fmt == "mdy_long":
        return f"{mn} {d}, {y}"
    if fmt == "us":
        return f"{m:02d}/{d:02d}/{y}"
    if fmt == "eu":
        return f"{d:02d}/{m:02d}/{y}"
    if fmt == "iso":
        return f"{y}-{m:02d}-{d:02d}"
    if fmt == "dot":
        return f"{d:02d}.{m:02d}.{y}"
    if fmt == "ord":
        return f"{_ordinal(d)} {mn} {y}" if chance(0.5) else f"{mn} {_ordinal(d)}, {y}"
    if fmt == "short_mon":
        return f"{mn[:3]} {d}, {y}" if chance(0.5) else f"{d}-{mn[:3]}-{y}"
    if fmt == "us_short":
        return f"{m}/{d}/{y % 100:02d}"
    if fmt == "noyear":
        return f"{d} {mn}" if chance(0.5) else f"{mn} {_ordinal(d)}"
    raise KeyError("DOB:" + fmt)


ENTITY_GENS = {
    "PERSON": ("PERSON", gen_person),
    "LOCATION": ("LOCATION", gen_location),
    "EMAIL": ("EMAIL_ADDRESS", gen_email),
    "PHONE": ("PHONE_NUMBER", gen_phone),
    "CARD": ("CREDIT_CARD", gen_card),
    "IBAN": ("IBAN_CODE", gen_iban),
    "IP": ("IP_ADDRESS", gen_ip),
    "SSN": ("US_SSN", gen_ssn),
    "URL": ("URL", gen_url),
    "MAC": ("MAC_ADDRESS", gen_mac),
    "CRYPTO": ("CRYPTO", gen_crypto),
    "DOB": ("DATE_TIME", gen_dob),
    "SECRET": ("SECRET", gen_secret),
    # A card's security code and expiry after their cue: the anonymizer redacts them as
    # card data (scored as CREDIT_CARD by `tether privacy eval`).
    "CVV": ("CVV", lambda var, ctx: digits(3)),
    "EXP": ("CARD_EXPIRY", lambda var, ctx: f"{R.randint(1, 12):02d}/{R.randint(26, 31)}"),
}

# --------------------------------------------------------------------------------------
# Unlabelled fillers (hard negatives and neutral values)
# --------------------------------------------------------------------------------------

COMPANIES = ["Acme Corp", "Microsoft", "Globex", "Initech", "Stripe", "Shopify", "Zendesk",
             "Atlassian", "Contoso", "Fabrikam", "Umbrella Logistics", "Hooli", "Northwind Traders",
             "Dell", "Ford", "Philips", "Oracle", "SAP", "Siemens", "Vodafone", "Wells Fargo",
             "Salesforce", "Cloudflare", "DHL", "FedEx"]
PRODUCTS = ["router", "laptop", "standing desk", "headphones", "subscription", "license",
            "coffee machine", "Pro plan", "smart thermostat", "e-bike", "air fryer", "monitor",
            "Team plan", "phone case", "mesh Wi-Fi kit", "keyboard"]
TEAMS = ["billing", "platform", "security", "data", "mobile", "infra", "design", "legal", "payroll"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FILES = ["report.pdf", "invoice.pdf", "config.yaml", "main.rs", "notes.txt", "export.csv",
         "screenshot.png", "setup.py", "docker-compose.yml", "README.md"]


def f_time(v, c):
    h, m = R.randint(7, 18), pick([0, 15, 30, 45, 10, 20])
    return wpick([(3, f"{h}:{m:02d}"), (2, f"{(h - 1) % 12 + 1}:{m:02d} {'am' if h < 12 else 'pm'}"),
                  (1, f"{(h - 1) % 12 + 1}{'am' if h < 12 else 'pm'}"), (1, f"{h:02d}:{m:02d} UTC")])


def f_meetdate(v, c):
    y, m, d = R.randint(2023, 2026), R.randint(1, 12), R.randint(1, 28)
    return wpick([(3, f"{y}-{m:02d}-{d:02d}"), (2, f"{d} {MONTHS[m - 1]}"), (2, f"{MONTHS[m - 1]} {d}"),
                  (1, f"{m:02d}/{d:02d}/{y}"), (1, f"{pick(DAYS)} {d} {MONTHS[m - 1]}"),
                  (1, f"{d} {MONTHS[m - 1]} {y}"), (1, f"the {_ordinal(d)}")])


def luhn_fail(n, first=None):
    s = (first or str(R.randint(1, 9))) + digits(n - len(first or "x"))
    if luhn_ok(s):
        s = s[:-1] + str((int(s[-1]) + 1) % 10)
    assert not luhn_ok(s)
    return s


def f_ordercc(v, c):
    return luhn_fail(16, pick(["4", "5", "37", "6011", "3"]))


def f_order(v, c):
    return wpick([(3, digits(1).replace("0", "1") + digits(R.randint(5, 9))),
                  (2, f"{pick(['A', 'W', 'UK', 'US', 'DE'])}-{digits(6)}"),
                  (1, luhn_fail(R.randint(13, 16)))])


def f_tracking(v, c):
    kind = wpick([(3, "16"), (2, "grouped"), (2, "ups"), (1, "20")])
    if kind == "16":
        return luhn_fail(16)
    if kind == "grouped":
        s = luhn_fail(16, "9")
        return " ".join(s[i:i + 4] for i in range(0, 16, 4))
    if kind == "ups":
        return "1Z" + rs(UPPER_DIGITS, 16)
    return luhn_fail(20 if chance(0.5) else 22)


def f_invoice(v, c):
    return wpick([(2, f"INV-{R.randint(2021, 2026)}-{digits(5)}"), (1, f"#{R.randint(10000, 99999)}"),
                  (1, f"{R.randint(2021, 2026)}/{digits(4)}"), (1, f"F{digits(8)}")])


def f_version(v, c):
    return wpick([(2, f"v{R.randint(1, 4)}.{R.randint(0, 15)}.{R.randint(0, 9)}.{R.randint(0, 9)}"),
                  (3, f"{R.randint(1, 12)}.{R.randint(0, 30)}.{R.randint(0, 20)}"),
                  (1, f"v{R.randint(0, 3)}.{R.randint(0, 40)}.{R.randint(0, 9)}-rc.{R.randint(1, 5)}"),
                  (1, f"{R.randint(2019, 2025)}.{R.randint(1, 12)}")])


def f_ipversion(v, c):  # IPv4-looking version number (unlabelled)
    return f"{R.randint(1, 12)}.{R.randint(0, 20)}.{R.randint(0, 60)}.{R.randint(0, 255)}"


def f_price(v, c):
    cur = pick(["$", "$", "€", "£"])
    whole = R.randint(1, 9999)
    w = f"{whole:,}"
    return f"{cur}{w}.{digits(2)}" if chance(0.7) else f"{cur}{w}"


def f_uuid(v, c):
    h = rs(HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{pick('89ab')}{h[17:20]}-{h[20:]}"


def f_bic(v, c):
    bank = rs(string.ascii_uppercase, 4)
    cc = pick(["DE", "GB", "FR", "ES", "NL", "IT", "CH"])
    loc = rs(UPPER_DIGITS, 2)
    return bank + cc + loc + (pick(["XXX", "", rs(UPPER_DIGITS, 3)]))


def f_ts(v, c):
    y, mo, d = R.randint(2024, 2026), R.randint(1, 12), R.randint(1, 28)
    h, mi, s = R.randint(0, 23), R.randint(0, 59), R.randint(0, 59)
    return wpick([(3, f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z"),
                  (2, f"{y}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d},{digits(3)}")])


def f_syslogts(v, c):
    return f"{pick(MONTHS)[:3]} {R.randint(1, 28):2d} {R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}"


def f_clf(v, c):
    return (f"{R.randint(1, 28):02d}/{pick(MONTHS)[:3]}/{R.randint(2024, 2026)}:"
            f"{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d} +0000")


FILLERS = {
    "company": lambda v, c: pick(COMPANIES),
    "product": lambda v, c: pick(PRODUCTS),
    "team": lambda v, c: pick(TEAMS),
    "day": lambda v, c: pick(DAYS),
    "month": lambda v, c: pick(MONTHS),
    "time": f_time,
    "meetdate": f_meetdate,
    "year": lambda v, c: str(R.randint(2012, 2025)),
    "order": f_order,
    "ordercc": f_ordercc,
    "tracking": f_tracking,
    "invoice": f_invoice,
    "version": f_version,
    "ipversion": f_ipversion,
    "price": f_price,
    "zip": lambda v, c: digits(5) if chance(0.7) else f"{digits(5)}-{digits(4)}",
    "sku": lambda v, c: wpick([(1, f"SKU-{rs(string.ascii_uppercase, 2)}-{digits(4)}"),
                               (1, f"PRD-{digits(5)}-{pick('ABCX')}"), (1, f"{rs(string.ascii_uppercase, 3)}{digits(4)}")]),
    "hex": lambda v, c: "#" + (rs(HEX, 6) if chance(0.8) else rs(HEX, 3)),
    "sha": lambda v, c: rs(HEX, 40),
    "shortsha": lambda v, c: rs(HEX, 7),
    "txhash": lambda v, c: "0x" + rs(HEX, 64),
    "uuid": f_uuid,
    "badssn": lambda v, c: bad_ssn(),
    "ticket": lambda v, c: wpick([(2, f"#{R.randint(1000, 99999)}"), (1, f"{pick(['OPS', 'SUP', 'BILL', 'INC'])}-{R.randint(100, 9999)}")]),
    "n": lambda v, c: str(R.randint(2, 90)),
    "big": lambda v, c: str(R.randint(100, 99999)),
    "last4": lambda v, c: digits(4),
    "exp": lambda v, c: f"{R.randint(1, 12):02d}/{R.randint(26, 31)}",
    "cvv": lambda v, c: digits(3),
    "ts": f_ts,
    "syslogts": f_syslogts,
    "clf": f_clf,
    "port": lambda v, c: pick(["22", "443", "8080", "5432", "3306", "6379", "9200"]),
    "host": lambda v, c: f"{pick(['web', 'db', 'cache', 'gw', 'api', 'worker'])}-{pick(['prod', 'stg', 'dev'])}-{R.randint(1, 12):02d}",
    "bic": f_bic,
    "pct": lambda v, c: f"{R.randint(1, 99)}%",
    "amount": lambda v, c: f"{R.randint(1, 9)}.{digits(R.randint(2, 4))}",
    "file": lambda v, c: pick(FILES),
    "title": lambda v, c: pick(TITLES),
    "ext": lambda v, c: str(R.randint(100, 9999)),
    "pid": lambda v, c: str(R.randint(300, 65000)),
}

# --------------------------------------------------------------------------------------
# Templates. {UPPER:variant} = labelled entity, {lower} = unlabelled filler.
# --------------------------------------------------------------------------------------

POS = {
    "PERSON": [
        "Hi, my name is {PERSON:full} and I can't log into my account.",
        "My name is {PERSON:full}; I ordered a {product} on {meetdate} and it still hasn't arrived.",
        "Dear {title} {PERSON:last}, thank you for contacting {company} support.",
        "Please contact {PERSON:full} in accounting if invoice {invoice} looks wrong.",
        "cc: {PERSON:lower}",
        "Can you write a thank-you note to {PERSON:first} for covering my shift on {day}?",
        "{PERSON:full} from the {team} team will take over ticket {ticket}.",
        "I spoke with {PERSON:first} on the phone yesterday and she said the refund was approved.",
        "Assign this to {PERSON:full}, she's on call this week.",
        "Thanks, {PERSON:first}",
        "hey its {PERSON:first_lower} again, the app keeps crashing",
        "Please summarise this email from {PERSON:full} about the {product} rollout.",
        "The account holder is {PERSON:full}.",
        "Could you help me write a birthday card for my grandmother, {PERSON:full}?",
        "Meeting notes: attendees {PERSON:full}, {PERSON:full} and {PERSON:first}.",
        "Our landlord, {title} {PERSON:last}, still hasn't returned the deposit.",
        "I'm writing on behalf of my father {PERSON:full}, who is in hospital this week.",
        "Patient {PERSON:full} was seen in clinic on {meetdate}.",
        "Ask {PERSON:first} whether the {product} demo is still on for {time}.",
        "Signed: {PERSON:full}",
        "Reviewer: {PERSON:full} | Approver: {PERSON:full}",
        "@{PERSON:first_lower} can you take a look at this?",
        "{PERSON:first}, {PERSON:first} and I are flying out on {day}.",
        "Contact person: {PERSON:full}, tel. {PHONE:any}",
        "Please update the recipient name to {PERSON:full}.",
        "The package was signed for by {PERSON:lower}.",
        "Write a LinkedIn recommendation for {PERSON:full}, who worked with me at {company} for {n} years.",
        "Is it rude to remind {PERSON:first} twice about the invoice?",
        "The new hire, {PERSON:full}, starts on {meetdate}; please set up her laptop.",
        "Dear {PERSON:first}, your subscription renews on {meetdate}.",
        "Hello {title} {PERSON:last}, your appointment has been moved to {time}.",
        "thx {PERSON:first_lower}!!",
        "Please invite {PERSON:full} and {PERSON:full} to the {team} channel.",
        "Emergency contact: {PERSON:full} (sister), {PHONE:any}",
        "Can you draft a polite reply to {PERSON:first}, who complained about the delay?",
        "I'm {PERSON:first}, the new office manager.",
        "Author: {PERSON:full}",
        "The driver, {PERSON:first}, left the parcel with a neighbour.",
        "{title} {PERSON:last} signed off on the budget yesterday.",
        "Forwarding this to {PERSON:full} ({EMAIL:p}) for approval.",
        "My colleague {PERSON:full} suggested I reach out to you.",
        "Please remove {PERSON:lower} from the mailing list.",
        "Who is {PERSON:full} and why is she in our shared drive?",
        "This ticket was opened by {PERSON:full} on behalf of {PERSON:full}.",
        "Happy to help, {PERSON:first}! Anything else?",
        "Kind regards,\n{PERSON:full}",
        "Best,\n{PERSON:first}",
    ],
    "LOCATION": [
        "I live in {LOCATION:city} and the delivery options don't include my area.",
        "Please ship the replacement to {LOCATION:addr}.",
        "My billing address is {LOCATION:addr}.",
        "We're moving from {LOCATION:city} to {LOCATION:city} in {month}.",
        "I'm based in {LOCATION:city}, {LOCATION:country}, so the {time} call works for me.",
        "The package is stuck at the depot in {LOCATION:city}.",
        "Our new office is at {LOCATION:addr}.",
        "I grew up in {LOCATION:country} but now live in {LOCATION:city}.",
        "Can you recommend restaurants near {LOCATION:addr}?",
        "My flight from {LOCATION:city} was cancelled, can I get a refund?",
        "Send the signed contract to our {LOCATION:city} office.",
        "Home address: {LOCATION:addr}",
        "is there a store in {LOCATION:city_lower}?",
        "Born and raised in {LOCATION:city}, now working remotely.",
        "I'm travelling to {LOCATION:country} next week, will my card work there?",
        "The return label shows {LOCATION:addr} as the sender.",
        "Which visa do I need to work in {LOCATION:country}?",
        "We have warehouses in {LOCATION:city}, {LOCATION:city} and {LOCATION:city}.",
        "Please update my address to {LOCATION:addr}; I moved out of {LOCATION:city} last month.",
        "what's the weather like in {LOCATION:city} tomorrow",
        "I'm currently in {LOCATION:place} and the app shows prices in the wrong currency.",
        "Our team is split between {LOCATION:city} and {LOCATION:region}.",
        "Delivery address:\n{LOCATION:addr}",
        "The invoice must show our registered office, {LOCATION:addr}.",
        "Can you find a hotel close to {LOCATION:addr} for {day} night?",
        "I moved to {LOCATION:country} in {year} and need to change my tax residency.",
        "She relocated to {LOCATION:city} after the merger.",
        "Pickup point: {LOCATION:addr}",
        "The conference venue is {LOCATION:addr}.",
        "We visited {LOCATION:city} and {LOCATION:city} on our honeymoon.",
        "My parents still live in {LOCATION:region}.",
        "Is the {product} available in {LOCATION:country}?",
        "The courier says the address {LOCATION:addr} doesn't exist.",
        "Meet me outside the station in {LOCATION:city}.",
    ],
    "EMAIL_ADDRESS": [
        "My account email is {EMAIL}.",
        "Please send the receipt to {EMAIL} instead of my work address.",
        "You can reach me at {EMAIL} or {PHONE:any}.",
        "I never received the verification link at {EMAIL}.",
        "Change the login email from {EMAIL} to {EMAIL}.",
        "From: {PERSON:full} <{EMAIL:p}>",
        "Reply-To: {EMAIL}",
        "can u forward that to {EMAIL} pls",
        "The bounce message says {EMAIL} does not exist.",
        "Add {EMAIL} to the allow-list for the {team} workspace.",
        "For billing questions write to {EMAIL:role}.",
        "I registered with {EMAIL} but I no longer have access to that inbox.",
        "Email: {EMAIL}",
        "To: {EMAIL}; Cc: {EMAIL}",
        "Why does the signup form reject {EMAIL}?",
        "{PERSON:full} ({EMAIL:p}) requested a data export.",
        "ping me on {EMAIL} when it's done",
        "Unsubscribe {EMAIL} from all marketing emails, please.",
    ],
    "PHONE_NUMBER": [
        "Call me back on {PHONE:any}, I'm free after {time}.",
        "My phone number is {PHONE:any}.",
        "Text me at {PHONE:us} when the driver is close.",
        "The caller left a voicemail from {PHONE:any} about order {order}.",
        "Please update my mobile to {PHONE:intl}.",
        "For urgent issues ring {PHONE:any} (24/7).",
        "Tel: {PHONE:any}",
        "WhatsApp: {PHONE:intl}",
        "I keep getting spam calls from {PHONE:us}, can you block it?",
        "Our support line is {PHONE:us} ext. {ext}.",
        "You can reach the front desk on {PHONE:uk}.",
        "Mobil: {PHONE:de}",
        "Numéro de téléphone : {PHONE:fr}",
        "my number changed to {PHONE:in}",
        "Phone: {PHONE:any} | Fax: {PHONE:any}",
        "Is {PHONE:any} the right number for the {team} team?",
        "The SMS code is sent to {PHONE:any}, which I no longer have.",
        "please call {PERSON:first} at {PHONE:any} before delivery",
    ],
    "CREDIT_CARD": [
        "My card {CARD} was charged twice for the same order.",
        "Please update the payment method to {CARD}, expiry {EXP}.",
        "My Amex {CARD:amex} expires {EXP}, can I still use it?",
        "Why was {CARD} declined at checkout?",
        "Refund to card {CARD} please, not store credit.",
        "I think someone stole my Visa {CARD:visa}.",
        "test card {CARD:plain} works in staging but not in prod",
        "Card number: {CARD}",
        "The Mastercard {CARD:mastercard} shows a pending charge of {price}.",
        "Charge {price} to {CARD} and email the receipt.",
        "I used my Discover card {CARD:discover} at the airport.",
        "JCB {CARD:jcb} isn't accepted on your site?",
        "Old Diners Club card: {CARD:diners}",
        "cc#: {CARD} cvv {CVV}",
        "Can you check if {CARD} passes the Luhn check?",
        "Please cancel the card ending {last4}; the full number is {CARD}.",
    ],
    "IBAN_CODE": [
        "Please wire the deposit to IBAN {IBAN}.",
        "My IBAN is {IBAN} (BIC {bic}).",
        "Refund to {IBAN}, account holder {PERSON:full}.",
        "Update the supplier's bank details to {IBAN}.",
        "Is {IBAN} a valid IBAN?",
        "The SEPA transfer from {IBAN} failed with error AM04.",
        "IBAN: {IBAN}",
        "Pay invoice {invoice} to {IBAN:grouped}.",
        "meine IBAN ist {IBAN:compact}",
        "Salary should go to {IBAN} from next month.",
        "The direct debit mandate lists {IBAN}, which is my old account.",
        "Bankverbindung: {IBAN}, {bic}",
    ],
    "IP_ADDRESS": [
        "The login attempt came from {IP:v4}.",
        "Our server at {IP} is not responding to ping.",
        "Whitelist {IP:v4} and {IP:v6} for the API.",
        "My router's IP is {IP:private}.",
        "ssh admin@{IP:v4} -p {port} hangs after the key exchange",
        "Blocked {big} requests from {IP} in the last hour.",
        "DNS resolves to {IP:v6} but the site is down.",
        "Set listen_address = {IP:v4} in the config.",
        "Why does my laptop get {IP:private} instead of a public address?",
        "Suspicious traffic from {IP:public} and {IP:public} overnight.",
        "The printer is at {IP:private}, port {port}.",
        "ping {IP:v6} returns 'network unreachable'",
        "Client IP: {IP}",
        "Can you geolocate {IP:public}?",
    ],
    "US_SSN": [
        "My SSN is {SSN}.",
        "Social Security Number: {SSN}",
        "I entered my social security number ({SSN}) but the form rejected it.",
        "Can you check whether {SSN} is formatted correctly for the W-2?",
        "SSN {SSN}, DOB {DOB}",
        "my ssn is {SSN:space} if you need it for the background check",
        "The tax form shows {SSN} but mine ends differently.",
        "Employee SSN: {SSN}",
        "For the loan application: SSN {SSN}, employer {company}.",
        "Please mask the SSN {SSN} before sharing the file.",
        "SS#: {SSN}",
    ],
    "URL": [
        "The docs at {URL} say the opposite.",
        "Click {URL} to reset your password.",
        "I get a 404 on {URL}.",
        "See {URL} for details.",
        "Please add {URL} to the allowed redirect URIs.",
        "Link: {URL}",
        "is {URL} a phishing site? it asked for my password",
        "The checkout page {URL} keeps spinning.",
        "Bookmark {URL} for the status page.",
        "Can you summarise the article at {URL}?",
        "I found the answer on {URL}, but it's outdated.",
        "Download the installer from {URL} and run it as admin.",
        "Our careers page ({URL}) lists the role as remote.",
    ],
    "MAC_ADDRESS": [
        "The device MAC is {MAC}.",
        "Add {MAC} to the DHCP reservation list.",
        "My laptop ({MAC}) can't join the guest Wi-Fi.",
        "Blocked client {MAC} on port Gi0/{n}.",
        "MAC address: {MAC}",
        "Two devices report the same MAC, {MAC}, is that possible?",
        "Whitelist the printer by hardware address {MAC}.",
        "The switch learned {MAC} on VLAN {n}.",
        "wol {MAC} doesn't wake the desktop",
    ],
    "CRYPTO": [
        "Send the {amount} BTC to {CRYPTO:btc}.",
        "My ETH wallet is {CRYPTO:eth}.",
        "The withdrawal to {CRYPTO} has been pending for {n} hours.",
        "Donations: BTC {CRYPTO:btc} / ETH {CRYPTO:eth}",
        "Is {CRYPTO:bech32} a SegWit address?",
        "I sent funds to {CRYPTO:legacy} by mistake, can they be recovered?",
        "Payout address: {CRYPTO}",
        "The scammer asked me to pay to {CRYPTO}.",
        "Please whitelist withdrawal address {CRYPTO:eth}.",
        "deposit address {CRYPTO:btc} shows 0 confirmations",
    ],
    "DATE_TIME": [
        "I was born on {DOB}.",
        "DOB: {DOB}",
        "My date of birth is {DOB} but the form says I'm under 18.",
        "Patient {PERSON:full}, date of birth {DOB}, presented with a sprained ankle.",
        "My son was born on {DOB}, do I need his birth certificate?",
        "Birthday: {DOB}",
        "Her birthday is {DOB:noyear}.",
        "Please correct my DOB to {DOB}; the record shows {DOB}.",
        "Date of Birth: {DOB}",
        "I was born {DOB:dmy_long} and my appointment is on {meetdate}.",
        "D.O.B. {DOB}",
        "birthdate {DOB:iso}",
        "The insurance card lists my date of birth as {DOB}.",
        "my birthday is {DOB:noyear} lol",
        "Applicant born {DOB:mdy_long} in {LOCATION:city}.",
        "Can you calculate my age if I was born on {DOB}?",
    ],
    "SECRET": [
        "I accidentally committed my OpenAI key {SECRET:openai} to GitHub, what should I do?",
        "Why does curl -H \"Authorization: Bearer {SECRET:bearer}\" {URL:api} return 401?",
        "The webhook is configured with token={SECRET:token}.",
        "export GITHUB_TOKEN={SECRET:github}",
        "Is this key still valid? {SECRET:openai_proj}",
        "Our Slack bot token {SECRET:slack} stopped working.",
        "The Maps API key {SECRET:google} is restricted to our domain.",
        "GITLAB_TOKEN={SECRET:gitlab} ./deploy.sh fails with 403",
        "Authorization: Bearer {SECRET:bearer}",
        "rotate the leaked AWS key {SECRET:aws} asap",
        "The Stripe key {SECRET:stripe} was pasted in the public channel.",
        "api_key={SECRET:token}",
        "Here's my token, can you debug the request? {SECRET:bearer}",
        "X-Api-Key: {SECRET:token}",
    ],
}

BLOCKS_POS = [
    # forms
    "Name: {PERSON:full}\nDate of birth: {DOB}\nPhone: {PHONE:any}\nEmail: {EMAIL:p}",
    "Full name: {PERSON:full}\nAddress: {LOCATION:addr}\nSSN: {SSN}",
    "Applicant: {PERSON:full} | DOB {DOB} | {LOCATION:city}",
    "First name: {PERSON:first}\nLast name: {PERSON:p_last}\nCountry: {LOCATION:country}",
    "Cardholder: {PERSON:full}\nCard number: {CARD}\nExpiry: {EXP}\nCVC: {CVV}",
    "Beneficiary: {PERSON:full}\nIBAN: {IBAN}\nBIC: {bic}\nReference: {invoice}",
    "Patient name: {PERSON:full}\nDOB: {DOB:us}\nPhone: {PHONE:us}",
    "Shipping to: {PERSON:full}, {LOCATION:addr}\nPhone: {PHONE:any}",
    "Employee: {PERSON:full}\nSSN: {SSN}\nStart date: {meetdate}",
    "Device: {host}\nMAC: {MAC}\nIP: {IP:private}",
    # config / code
    "OPENAI_API_KEY={SECRET:openai}\nDB_HOST={IP:private}\nDB_PORT={port}",
    "[default]\naws_access_key_id = {SECRET:aws}\naws_secret_access_key = {SECRET:aws_secret}\nregion = eu-west-1",
    "slack:\n  bot_token: \"{SECRET:slack}\"\n  channel: \"#alerts\"",
    "const firebaseConfig = { apiKey: \"{SECRET:google}\", projectId: \"demo-app\" };",
    "client = OpenAI(api_key=\"{SECRET:openai}\")",
    "headers = {\"Authorization\": \"Bearer {SECRET:bearer}\"}\nresp = requests.get(\"{URL:api}\", headers=headers)",
    "iface eth0 inet static\n  address {IP:v4}\n  hwaddress ether {MAC}",
    "{\"user\": {\"email\": \"{EMAIL}\", \"phone\": \"{PHONE:any}\"}}",
    "stripe.api_key = \"{SECRET:stripe}\"",
    "smtp:\n  host: {IP:private}\n  from: \"{EMAIL:role}\"",
    "GH_TOKEN: ${{ secrets.GH_TOKEN }}  # was {SECRET:github}, rotated",
    "ALLOWED_IPS=\"{IP:v4},{IP:v4}\"",
    "wallet:\n  btc: {CRYPTO:btc}\n  eth: {CRYPTO:eth}",
    # csv
    "name,email,phone\n{PERSON:full},{EMAIL:p},{PHONE:any}",
    "id,first_name,last_name,dob\n{big},{PERSON:first},{PERSON:p_last},{DOB:iso}",
    "timestamp,src_ip,dst_ip,bytes\n{ts},{IP:v4},{IP:v4},{big}",
    "customer,iban,amount\n{PERSON:full},{IBAN:compact},{price}",
    "order_id,card,status\n{order},{CARD:plain},declined",
    "name,city,country\n{PERSON:full},{LOCATION:city},{LOCATION:country}",
    "employee_id;name;ssn\n{big};{PERSON:full};{SSN}",
    "mac,ip,hostname\n{MAC},{IP:private},{host}",
    "{PERSON:full},\"{LOCATION:addr}\",{PHONE:any}",
    # logs
    "{ts} INFO auth: login succeeded user={EMAIL} ip={IP}",
    "{syslogts} gw01 dhcpd[{pid}]: DHCPACK on {IP:private} to {MAC} via eth0",
    "{IP:v4} - - [{clf}] \"GET /api/v1/orders?id={big} HTTP/1.1\" 200 {big}",
    "{ts} ERROR payment: charge failed card={CARD:plain} order={order} reason=insufficient_funds",
    "{ts} WARN webhook: invalid signature token={SECRET:token} from {IP:v4}",
    "{ts} DEBUG http: GET {URL} -> 302",
    "{ts} INFO signup: new user {EMAIL} from {IP:public} ({LOCATION:city})",
    "{ts} WARN kyc: ssn mismatch for applicant {PERSON:full} (submitted {SSN})",
    "{ts} INFO payout: sent {amount} BTC to {CRYPTO:btc} request={uuid}",
    "{syslogts} {host} sshd[{pid}]: Failed password for invalid user admin from {IP} port {big} ssh2",
    "{ts} INFO sepa: mandate created iban={IBAN:compact} ref={invoice}",
]

NEG_SENTENCES = [
    "Order #{ordercc} still shows as processing.",
    "Tracking number {tracking} hasn't updated since {day}.",
    "Invoice {invoice} is due on {meetdate}.",
    "We upgraded to {version} and the bug is gone.",
    "Firmware version {ipversion} fixed the Wi-Fi drops.",
    "After updating to build {ipversion} the app stopped crashing.",
    "The meeting moved to {meetdate} at {time}.",
    "Let's sync at {time} on {day}.",
    "The total came to {price} including tax.",
    "Is {zip} inside your delivery zone?",
    "Product code {sku} is out of stock again.",
    "Use {hex} for the button background.",
    "The regression was introduced in commit {sha}.",
    "Request ID {uuid} failed with a timeout.",
    "The form accepted {badssn} even though that's not a valid SSN.",
    "Test fixtures should use obviously invalid numbers like {badssn}.",
    "I will grant you that the new UI is faster.",
    "We had tea in the rose garden after the tour.",
    "Please mark the date in your calendar.",
    "Reading is fun, but this manual is 400 pages long.",
    "Nice work on the release!",
    "The mobile app logs me out every {n} minutes.",
    "Can we split the bill between two payment methods?",
    "I ordered a turkey sandwich and got ham instead.",
    "Grandma's china got chipped during the move.",
    "Orange is our accent colour, not red.",
    "Project Phoenix ships in Q{n} {year}.",
    "The Java runtime crashes on startup.",
    "{company} and {company} both bid on the contract.",
    "Unfortunately the update failed again.",
    "Honestly, the {product} is worth the price.",
    "We've used {company} since {year}.",
    "Hope this helps!",
    "To be frank, the new pricing is confusing.",
    "Will the patch be ready by {day}?",
    "Sales usually peak in May and June.",
    "Ethereum transaction {txhash} is confirmed.",
    "The card ending in {last4} was charged {price}.",
    "Call extension {ext} if the line is busy.",
    "Press 1 for billing and 2 for support.",
    "The rotation changes at {time} every {day}.",
    "Set the timeout to 30s and the retries to 5.",
    "I'd rate it 4.5 out of 5.",
    "The refund of {price} was processed on {meetdate}.",
    "Sprint {n} ends on {meetdate}.",
    "Our company was founded in {year}.",
    "Summer sale starts on {day}.",
    "Bill me monthly instead of annually.",
    "I bought a new jersey for the match.",
    "The cologne you recommended smells great.",
    "Mark my words, this release will be late.",
    "Apparently the VPN is down again.",
    "Attached is the quarterly report ({file}).",
    "Given the delay, can we get a discount?",
    "Regards and thanks for your patience.",
    "Pushed to August because of the audit.",
    "Can you explain how IBAN check digits are computed?",
    "What's the difference between IPv4 and IPv6?",
    "How do I rotate my API keys safely?",
    "Is it safe to send my SSN over email?",
    "Write a regex that matches email addresses.",
    "My package tracking says 'in transit' for a week.",
    "The lockbox code is {last4}.",
    "Room {big} is booked for the retro.",
    "Ruby 3.3 broke our gem build.",
    "We need {n} more licences for the {team} team.",
    "The {product} arrived with a cracked screen.",
    "Error code {big} appears when I click save.",
    "Her patience is a virtue we all admire.",
    "We'll grant access once the form is approved.",
    "Turkey is on the menu for the holiday lunch.",
    "The hotfix {shortsha} is already on main.",
    "Build {version} is tagged as stable.",
    "Our zip code lookup fails for {zip}.",
    "The colour {hex} fails the contrast check.",
    "The SKU {sku} maps to two warehouses.",
    "Session {uuid} expired after {n} minutes.",
    "Amber warnings are shown for low stock.",
    "Frank feedback is welcome.",
    "The summit was a huge success.",
    "We hit {pct} test coverage this sprint.",
    "The {company} integration returns HTTP 500.",
    "Everything was fine until {time} yesterday.",
    "Our office closes at {time} on {day}.",
    "Price went from {price} to {price} overnight.",
    "Can I change the delivery slot to {time}?",
    "The quarterly review is on {meetdate}.",
    "In {year} we migrated everything to the cloud.",
    "The warranty expired in {year}.",
    "Jersey, Guernsey and Alderney cows produce rich milk.",
    "The Victoria sponge was the first thing to go.",
    "Our Dell laptops need a BIOS update to {version}.",
    "Ford recalled the model over a brake issue.",
    "Wells Fargo flagged the transaction as unusual.",
    "Split payments are not supported yet.",
    "The Nice classification covers goods and services.",
    "Buffalo wings were served at the offsite.",
    "Hamburger menus confuse older users.",
    "Champagne was served at the launch party.",
    "Version {ipversion} of the driver is required.",
    "I paid {price} for shipping, which seems high.",
    "The list has {big} rows but only {n} columns.",
    "The deadline is {time} on {meetdate}.",
    "Placeholder SSNs like {badssn} must be rejected by the validator.",
    "Order {order} was split into two shipments.",
    "Parcel {tracking} was returned to sender.",
    "Invoice {invoice} was paid twice.",
    "Please reference ticket {ticket} in your reply.",
    "Use BIC {bic} only for international transfers.",
    "The merge commit is {sha}.",
    "Set primary to {hex} and secondary to {hex}.",
    "Our SLA is {pct} uptime per month.",
    "The download took {n} minutes on a slow connection.",
]

NEG_BLOCKS = [
    "{ts} INFO build: version {version} deployed commit {sha}",
    "order_id,sku,qty,price\n{order},{sku},{n},{price}",
    ".btn-primary { color: {hex}; }",
    "request_id={uuid} status=200 latency_ms={big}",
    "git checkout {shortsha} && cargo build --release",
    "{ts} WARN cache: eviction rate {pct} on {host}",
    "invoice,amount,due\n{invoice},{price},{meetdate}",
    "{syslogts} {host} kernel: eth0: link up, 1000 Mbps, full duplex",
    "version: \"{version}\"\nreplicas: {n}\ntimeout_ms: {big}",
    "tracking_no,carrier,status\n{tracking},DHL,in_transit",
    "{ts} ERROR db: connection pool exhausted on {host}:{port}",
    "sku,color\n{sku},{hex}\n{sku},{hex}",
    "FROM rust:1.78\nWORKDIR /app\nRUN cargo build --release",
    "{ts} INFO release {ipversion} promoted to stable",
    "commit {sha}\nDate: {meetdate}\n\n    Fix flaky test",
    "ssn_test_values = [\"{badssn}\", \"{badssn}\"]  # invalid by design",
]

INTROS = [
    "Can you help me with this?", "Please redact the personal data in the following message:",
    "Summarise this support ticket:", "Rewrite this more politely:", "Translate to Spanish:",
    "Quick question.", "Hi there!", "Hello,", "hey", "Urgent:", "FYI:", "Is this normal?",
    "Please check the following.", "Customer message:", "Ticket {ticket}:",
    "Can you turn this into a table?", "Fix the grammar:", "Extract the key fields from this:",
    "Here's what the customer wrote:", "Good morning,",
]
CLOSERS = [
    "Thanks!", "Thanks in advance.", "Any ideas?", "Let me know if you need anything else.",
    "Much appreciated.", "cheers", "Please advise.", "What should I do?", "Regards.",
    "Sorry for the long message.",
]
BLOCK_INTROS = [
    "Can you check this config?", "Why does this fail?", "Parse this log line:",
    "Please redact this before I share it:", "Convert this to JSON:", "Is anything sensitive here?",
    "Here is the export:", "Found this in our repo:", "Explain this entry:", "Clean up this record:",
]

# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

PH = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z0-9_]+))?\}")


class Frag:
    def __init__(self, text="", spans=None):
        self.text = text
        self.spans = spans or []   # dicts: type, start, end, value

    def __add__(self, other):
        off = len(self.text)
        return Frag(self.text + other.text,
                    self.spans + [dict(s, start=s["start"] + off, end=s["end"] + off) for s in other.spans])


def render(tpl, ctx):
    out, spans, pos, last = [], [], 0, 0
    for m in PH.finditer(tpl):
        lit = tpl[last:m.start()]
        out.append(lit)
        pos += len(lit)
        key, var = m.group(1), m.group(2) or ""
        if key in ENTITY_GENS:
            label, fn = ENTITY_GENS[key]
            val = fn(var, ctx)
            spans.append({"type": label, "start": pos, "end": pos + len(val), "value": val})
        elif key in FILLERS:
            val = FILLERS[key](var, ctx)
        else:
            raise KeyError(f"unknown placeholder {m.group(0)!r} in {tpl!r}")
        out.append(val)
        pos += len(val)
        last = m.end()
    out.append(tpl[last:])
    text = "".join(out)
    for s in spans:
        assert text[s["start"]:s["end"]] == s["value"], (text, s)
    return Frag(text, spans)


def prose_seps(parts):
    """Separators for prose parts: a space after sentence-final punctuation, otherwise
    (a signature, a "cc:" line, an unpunctuated chat message, a multi-line block) a newline."""
    seps = []
    for prev, cur in zip(parts, parts[1:]):
        flat = "\n" not in prev.text and "\n" not in cur.text
        seps.append(" " if flat and prev.text.rstrip()[-1:] in ".!?:" and not chance(0.08) else "\n")
    return seps


def join(frags, seps):
    acc = frags[0]
    for f, sep in zip(frags[1:], seps):
        acc = acc + Frag(sep) + f
    return acc


# Outside any labelled span, nothing may look like a labelled entity.
RE_DIGIT_RUN = re.compile(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w])")
RE_SSN = re.compile(r"(?<![\w-])\d{3}[- ]\d{2}[- ]\d{4}(?![\w-])")
RE_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
RE_URL = re.compile(r"https?://|www\.")
RE_SECRET = re.compile(r"\b(?:sk-|ghp_|AKIA|xox[bp]-|AIza|glpat-)")
RE_ETH = re.compile(r"(?<![0-9a-fA-Fx])0x[0-9a-fA-F]{40}(?![0-9a-fA-F])")


def leaks(frag):
    """Entity-looking text outside spans (a generated hard negative that accidentally
    became a positive)."""
    mask = list(frag.text)
    for s in frag.spans:
        for i in range(s["start"], s["end"]):
            mask[i] = "\0"
    t = "".join(mask)
    for m in RE_DIGIT_RUN.finditer(t):
        if luhn_ok(m.group(0)):
            return "luhn " + m.group(0)
    for m in RE_SSN.finditer(t):
        if ssn_valid(m.group(0)):
            return "ssn " + m.group(0)
    for rx in (RE_EMAIL, RE_URL, RE_SECRET, RE_ETH):
        m = rx.search(t)
        if m:
            return "pattern " + m.group(0)
    return None


POS_WEIGHTS = {t: 1.0 for t in TYPES}
POS_WEIGHTS.update({"PERSON": 1.4, "LOCATION": 2.7, "CREDIT_CARD": 1.25, "URL": 1.4, "CRYPTO": 1.15,
                    "DATE_TIME": 1.15, "US_SSN": 1.25, "MAC_ADDRESS": 1.1, "IBAN_CODE": 1.3})


def _fresh(pool, ctx):
    """A template from pool not yet used in this text."""
    used = ctx.setdefault("used", set())
    while True:
        tpl = pick(pool)
        if tpl not in used:
            used.add(tpl)
            return tpl


def pos_sentence(ctx, typ=None):
    typ = typ or wpick([(w, t) for t, w in POS_WEIGHTS.items()])
    return render(_fresh(POS[typ], ctx), ctx)


def neg_sentence(ctx):
    return render(_fresh(NEG_SENTENCES, ctx), ctx)


SALUTATION_STARTS = ("Dear", "Hello", "Hi", "Kind regards", "Best,", "Thanks,", "Happy to help", "cc:",
                     "Signed:", "Author:", "thx")


def make_positive():
    ctx = {}
    style = wpick([(26, "block"), (52, "prose"), (14, "email"), (8, "chat")])
    if style == "block":
        f = render(pick(BLOCKS_POS), ctx)
        if chance(0.45):
            f = join([render(pick(BLOCK_INTROS), ctx), f], ["\n"])
        return f
    if style == "email":
        greet = wpick([(3, "Dear {title} {PERSON:last},"), (3, "Hi {PERSON:first},"), (2, "Hello team,"),
                       (1, "Dear Sir or Madam,"), (1, "Hi all,")])
        body = [pos_sentence(ctx)]
        while body[0].text.startswith(SALUTATION_STARTS):
            body = [pos_sentence(ctx)]
        if chance(0.4):
            body.append(neg_sentence(ctx) if chance(0.6) else pos_sentence(ctx))
            if chance(0.5):
                body.reverse()
        sign = wpick([(3, "Best regards,\n{PERSON:full}"), (2, "Thanks,\n{PERSON:first}"), (1, "Cheers"),
                      (1, "Kind regards,\n{PERSON:full}\n{company}"), (1, "Best,\n{PERSON:full}\n{PHONE:any}")])
        parts = [render(greet, ctx)] + body + [render(sign, ctx)]
        return join(parts, ["\n\n"] + [" "] * (len(body) - 1) + ["\n\n"])
    if style == "chat":
        f = pos_sentence(ctx)
        t = f.text
        if chance(0.5) and t.endswith("."):
            f = Frag(t[:-1], f.spans)
        parts = [f]
        if chance(0.4):
            parts.append(render(pick(["pls help", "thx", "asap pls", "any idea?", "??", "ty"]), ctx))
        return join(parts, [" "] * (len(parts) - 1))
    parts = [pos_sentence(ctx)]
    for _ in range(wpick([(4, 0), (4, 1), (2, 2)])):
        parts.append(pos_sentence(ctx) if chance(0.45) else neg_sentence(ctx))
    R.shuffle(parts)
    if chance(0.25):
        parts.insert(0, render(pick(INTROS), ctx))
    elif chance(0.15):
        parts.append(render(pick(CLOSERS), ctx))
    return join(parts, prose_seps(parts))


def make_negative():
    ctx = {}
    if chance(0.22):
        f = render(pick(NEG_BLOCKS), ctx)
        if chance(0.4):
            f = join([render(pick(BLOCK_INTROS), ctx), f], ["\n"])
        return f
    parts = [neg_sentence(ctx) for _ in range(wpick([(4, 1), (4, 2), (2, 3)]))]
    if chance(0.2):
        parts.insert(0, render(pick(INTROS), ctx))
    elif chance(0.2):
        parts.append(render(pick(CLOSERS), ctx))
    return join(parts, prose_seps(parts))


def generate(n=N_TEXTS):
    R.seed(SEED)
    n_neg = round(n * NEG_FRACTION)
    kinds = [False] * n_neg + [True] * (n - n_neg)
    R.shuffle(kinds)
    seen, rows = set(), []
    for positive in kinds:
        while True:
            f = make_positive() if positive else make_negative()
            k = len(f.spans)
            if positive and not (1 <= k <= MAX_ENTITIES):
                continue
            if not positive and k:
                continue
            if f.text in seen or leaks(f):
                continue
            break
        seen.add(f.text)
        for s in f.spans:
            assert f.text[s["start"]:s["end"]] == s["value"]
        rows.append({"text": f.text,
                     "spans": [{"type": s["type"], "start": s["start"], "end": s["end"]} for s in f.spans]})
    return rows


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

def validate(path, verbose=True):
    errors, counts, per_text, n = [], Counter(), Counter(), 0
    with open(path, encoding="utf-8") as fh:
        for ln, line in enumerate(fh, 1):
            n += 1
            try:
                row = json.loads(line)
            except ValueError as e:
                errors.append(f"line {ln}: bad JSON ({e})")
                continue
            text, spans = row.get("text"), row.get("spans")
            if not isinstance(text, str) or not isinstance(spans, list) or set(row) != {"text", "spans"}:
                errors.append(f"line {ln}: wrong shape")
                continue
            per_text[len(spans)] += 1
            prev_end = 0
            for s in spans:
                t, a, b = s.get("type"), s.get("start"), s.get("end")
                if t not in TYPES:
                    errors.append(f"line {ln}: unknown type {t}")
                if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= len(text)):
                    errors.append(f"line {ln}: span out of bounds {s}")
                    continue
                if a < prev_end:
                    errors.append(f"line {ln}: overlapping or unsorted span {s}")
                prev_end = b
                v = text[a:b]
                if v != v.strip():
                    errors.append(f"line {ln}: span has surrounding whitespace {v!r}")
                counts[t] += 1
                ok = True
                if t == "CREDIT_CARD":
                    ds = re.sub(r"[ -]", "", v)
                    ok = ds.isdigit() and 13 <= len(ds) <= 19 and luhn_ok(ds)
                elif t == "IBAN_CODE":
                    ok = iban_valid(v)
                elif t == "US_SSN":
                    ok = ssn_valid(v)
                elif t == "CRYPTO":
                    ok = (re.fullmatch(r"0x[0-9a-f]{40}", v) is not None
                          or (v.startswith("bc1") and len(v) == 42 and bech32_valid(v))
                          or (v[0] in "13" and 26 <= len(v) <= 35 and b58check_valid(v)))
                elif t == "EMAIL_ADDRESS":
                    ok = RE_EMAIL.fullmatch(v) is not None
                elif t == "URL":
                    ok = RE_URL.match(v) is not None and v[-1] not in ".,;:!?)"
                elif t == "MAC_ADDRESS":
                    ok = re.fullmatch(r"([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}", v) is not None
                elif t == "IP_ADDRESS":
                    ok = (re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})", v) is not None
                          and all(int(x) <= 255 for x in v.split("."))) or (":" in v and re.fullmatch(r"[0-9A-Fa-f:]+", v) is not None)
                if not ok:
                    errors.append(f"line {ln}: invalid {t} value {v!r}")
            lk = leaks(Frag(text, [dict(s, value=None) for s in spans if isinstance(s.get("start"), int)]))
            if lk:
                errors.append(f"line {ln}: unlabelled entity-like text: {lk}")
    if verbose:
        print(f"{path}: {n} lines, {len(errors)} errors")
        for e in errors[:20]:
            print("  " + e)
        print("spans per type:")
        for t in TYPES:
            print(f"  {t:14s} {counts[t]:5d}")
        print(f"  {'total':14s} {sum(counts.values()):5d}")
        print("texts by number of spans: " + ", ".join(f"{k}: {per_text[k]}" for k in sorted(per_text)))
        if n:
            print(f"texts without spans: {per_text[0]} ({100.0 * per_text[0] / n:.1f}%)")
    return errors, counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--n", type=int, default=N_TEXTS)
    ap.add_argument("--check", action="store_true", help="only validate --out")
    ap.add_argument("--seed", type=int, default=SEED, help="another seed gives a fresh set (e.g. a test split)")
    args = ap.parse_args(argv)
    globals()["SEED"] = args.seed
    assert len(ALL_FIRST) >= 300 and len(ALL_LAST) >= 300, (len(ALL_FIRST), len(ALL_LAST))
    if not args.check:
        rows = generate(args.n)
        with open(args.out, "w", encoding="utf-8", newline="\n") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    errors, _ = validate(args.out)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
