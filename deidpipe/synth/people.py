"""Synthetic people, sites and identifiers, drawn deterministically from a seed.

Every value here is invented, but shaped like the real thing (names in four DICOM character sets, MRNs, phone
numbers, addresses), so that a de-identification engine meets what it meets in a hospital archive. Values are
chosen to be *distinctive*: a leak search over output bytes must not find a planted value by coincidence, so IDs
carry letter prefixes and times carry fractional seconds.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

# A patient's name in one character set.  ``pn`` is the full DICOM PN value (with ideographic and phonetic
# component groups for the ISO 2022 sets); ``natural`` is how the name is written in free text.
_NAMES: dict[str, list[tuple[str, str, str]]] = {
    "latin1": [
        ("Müller^Jürgen", "Jürgen Müller", "Jürgen Müller"),
        ("Lefèvre^Amélie", "Amélie Lefèvre", "Amélie Lefèvre"),
        ("Sørensen^Bjørn", "Bjørn Sørensen", "Bjørn Sørensen"),
        ("Nuñez^Iñaki", "Iñaki Nuñez", "Iñaki Nuñez"),
    ],
    "jis": [
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Tarou Yamada", "山田太郎"),
        ("Suzuki^Hanako=鈴木^花子=すずき^はなこ", "Hanako Suzuki", "鈴木花子"),
        ("Tanaka^Ichirou=田中^一郎=たなか^いちろう", "Ichirou Tanaka", "田中一郎"),
    ],
    "ksx": [
        ("Hong^Gildong=洪^吉洞=홍^길동", "Gildong Hong", "홍길동"),
        ("Kim^Minsoo=金^敏洙=김^민수", "Minsoo Kim", "김민수"),
        ("Park^Jiwoo=朴^智友=박^지우", "Jiwoo Park", "박지우"),
    ],
    "utf8": [
        ("Wiśniewska^Zofia", "Zofia Wiśniewska", "Zofia Wiśniewska"),
        ("Nguyễn^Thị Lan", "Thị Lan Nguyễn", "Nguyễn Thị Lan"),
        ("Παπαδοπούλου^Ελένη", "Ελένη Παπαδοπούλου", "Ελένη Παπαδοπούλου"),
    ],
}

#: The four character sets, in the order patients cycle through them: (key, SpecificCharacterSet value).
CHARSETS: list[tuple[str, str | list[str]]] = [
    ("latin1", "ISO_IR 100"),
    ("jis", ["", "ISO 2022 IR 87"]),
    ("ksx", ["", "ISO 2022 IR 149"]),
    ("utf8", "ISO_IR 192"),
]
#: SR documents are always written in UTF-8: that way a three-patient archive still carries all four sets.
UTF8 = "ISO_IR 192"

# Staff names are plain ASCII (most PACS write them so) and unique per patient for up to six patients.
_STAFF = [
    "Okafor^Chidi^^Dr", "Lindqvist^Maja", "Brennan^Siobhan^^Dr", "Achterberg^Pieter", "Varga^Zsofia^^Dr",
    "Castellanos^Rodrigo", "Abernathy^Wendell^^Dr", "Kowalczyk^Agnieszka", "Mbeki^Thandiwe^^Dr",
    "Fairweather^Imogen", "Delacroix^Etienne^^Dr", "Haverkamp^Luuk", "Szabo^Bence^^Dr", "Oyelaran^Folake",
    "Rasmussen^Kasper^^Dr", "Quintero^Valeria", "Whitcombe^Harriet^^Dr", "Zielinski^Tomasz",
    "Petrakis^Yannis^^Dr", "Ekwueme^Adaeze", "Gallagher^Declan^^Dr", "Ivanova^Svetlana", "Thorsen^Eirik^^Dr",
    "Marchetti^Giulia", "Halvorsen^Ingrid^^Dr", "Oduya^Kwame", "Laurent^Capucine^^Dr", "Novak^Ondrej",
    "Sandoval^Ximena^^Dr", "Bergstrom^Linnea", "Adeyemi^Tunde^^Dr", "Kaczmarek^Jolanta", "Fitzroy^Alistair^^Dr",
    "Moreau^Sylvain", "Takeda^Hiroshi^^Dr", "Ballantyne^Fiona",
]
_STAFF_ROLES = ("referring", "performing", "operator", "reader", "verifier", "interpreter")

_SITES = [
    ("St Brigid's Infirmary Harrowgate", "14 Larkspur Lane, Harrowgate HG7 3QX", "HARROWGATE_PACS", "Harrowgate"),
    ("Kestrel Valley Medical Centre", "220 Osprey Drive, Kestrel Valley KV2 8LP", "KESTRELVAL_PACS", "Kestrel"),
    ("Fenwick Memorial Hospital", "3 Quarry Row, Fenwick FN1 4ZD", "FENWICKMEM_PACS", "Fenwick"),
    ("Ashbourne Royal Clinic", "77 Tannery Street, Ashbourne AB9 2RW", "ASHBOURNE_PACS", "Ashbourne"),
]
_STREETS = ["Willowmere Close", "Cobblestone Way", "Juniper Terrace", "Marlowe Crescent", "Heathfield Road"]
_TOWNS = ["Brackenridge", "Thornbury", "Wexcombe", "Pellingford", "Cranmoor"]


@dataclass(frozen=True)
class Site:
    """An institution with its devices; everything here identifies the site, hence the patient's locale."""

    name: str
    address: str
    pacs_ae: str
    short: str
    department: str
    ct_station: str
    mr_station: str
    us_station: str
    ct_serial: str
    mr_serial: str
    us_serial: str


@dataclass(frozen=True)
class Person:
    """A synthetic patient with every identifier the archive will carry."""

    index: int
    charset: str  # key into CHARSETS: latin1, jis, ksx, utf8
    specific_character_set: str | list[str]
    name: str  # DICOM PN value, all component groups
    natural_name: str  # "Given Family", romanised, as used in English free text
    local_name: str  # as written in the patient's own script, used in free text of the local charset
    patient_id: str
    issuer: str
    other_id: str
    other_issuer: str
    birth_date: dt.date
    sex: str
    address: str
    phone: str
    mother_birth_name: str
    staff: dict[str, str]
    site: Site

    @property
    def mrn_digits(self) -> str:
        """The digits of the MRN; they are embedded in this patient's UIDs, as some scanners really do."""
        return self.patient_id[1:]


def _digits(rng: random.Random, n: int) -> str:
    """n random digits without a leading zero (UID components must not start with 0)."""
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def make_site(index: int, rng: random.Random) -> Site:
    """The site that patient ``index`` was scanned at."""
    name, address, ae, short = _SITES[index % len(_SITES)]
    return Site(
        name=name,
        address=address,
        pacs_ae=ae,
        short=short,
        department=f"{short} Diagnostic Imaging",
        ct_station=f"{short.upper()}-CT{rng.randint(10, 99)}",
        mr_station=f"{short.upper()}-MR{rng.randint(10, 99)}",
        us_station=f"{short.upper()}-US{rng.randint(10, 99)}",
        ct_serial=f"CTSN{_digits(rng, 7)}",
        mr_serial=f"MRSN{_digits(rng, 7)}",
        us_serial=f"USSN{_digits(rng, 7)}",
    )


def make_person(index: int, rng: random.Random) -> Person:
    """Patient ``index``; patients cycle through the four character sets so any four patients cover all."""
    charset, specific = CHARSETS[index % len(CHARSETS)]
    pool = _NAMES[charset]
    name, natural, local = pool[(index // len(CHARSETS)) % len(pool)]
    staff_base = (index * len(_STAFF_ROLES)) % len(_STAFF)
    staff = {role: _STAFF[(staff_base + i) % len(_STAFF)] for i, role in enumerate(_STAFF_ROLES)}
    birth = dt.date(1935, 1, 1) + dt.timedelta(days=rng.randint(0, 60 * 365))
    street = f"{rng.randint(2, 998)} {rng.choice(_STREETS)}"
    return Person(
        index=index,
        charset=charset,
        specific_character_set=specific,
        name=name,
        natural_name=natural,
        local_name=local,
        patient_id=f"H{_digits(rng, 7)}",
        issuer="HOSP-MRN-AUTH",
        other_id=f"NHI{_digits(rng, 8)}",
        other_issuer="NATIONAL-HEALTH-INDEX",
        birth_date=birth,
        sex="MF"[index % 2],
        address=f"{street}^^{rng.choice(_TOWNS)}^^ZX{rng.randint(1, 9)} {rng.randint(1, 9)}QJ",
        phone=f"+44 {rng.randint(1200, 1999)} {_digits(rng, 6)}",
        mother_birth_name=("Featherstonehaugh", "Okonkwo-Bright", "Vanderwoude", "Abercrombie")[index % 4]
        + "^"
        + ("Prudence", "Ngozi", "Henrike", "Marisol")[index % 4],
        staff=staff,
        site=make_site(index, rng),
    )


def fmt_date(d: dt.date) -> str:
    """DICOM DA."""
    return d.strftime("%Y%m%d")


def fmt_time(rng: random.Random, hour_lo: int = 7, hour_hi: int = 19) -> str:
    """A DICOM TM with fractional seconds: distinctive enough to search for without false hits."""
    hh, mm, ss, frac = rng.randint(hour_lo, hour_hi), rng.randint(0, 59), rng.randint(0, 59), rng.randint(1, 999)
    return f"{hh:02d}{mm:02d}{ss:02d}.{frac:03d}"


def age_string(birth: dt.date, on: dt.date) -> str:
    """DICOM AS in years, e.g. '054Y'."""
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"
