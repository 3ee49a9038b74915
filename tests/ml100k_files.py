"""A tiny MovieLens-100K in the official formats (latin-1, `|` and tab separated), written to a folder or zip."""

from __future__ import annotations

import zipfile
from pathlib import Path

GENRE = "unknown|0\nAction|1\nComedy|2\n\n"
OCCUPATION = "engineer\nstudent\nwriter\n"
USER = "1|24|M|engineer|85711\n2|53|F|student|94043\n3|23|M|writer|T8H1N\n"
ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n"
    "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|0\n"
    "3|Land Before Time III (1995) (V)|4-Feb-1996||http://x|0|1|1\n"
    "4|unknown|||http://x|1|0|0\n"
)
DATA = (
    "1\t1\t5\t881250949\n1\t2\t3\t881250950\n1\t3\t4\t881250951\n2\t1\t4\t881250952\n"
    "2\t4\t1\t881250953\n3\t2\t2\t881250954\n3\t3\t5\t881250955\n2\t2\t3\t881250956\n"
)
U1_BASE = (
    "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250952\n3\t2\t2\t881250954\n"
    "3\t3\t5\t881250955\n2\t2\t3\t881250956\n"
)
U1_TEST = "1\t3\t4\t881250951\n2\t4\t1\t881250953\n"
FILES = {
    "u.genre": GENRE,
    "u.occupation": OCCUPATION,
    "u.user": USER,
    "u.item": ITEM,
    "u.data": DATA,
    "u1.base": U1_BASE,
    "u1.test": U1_TEST,
}


def write_ml(root: Path, **changes: str | None) -> Path:
    """Write the tiny ML-100K into root/ml-100k; `changes` replaces (or with None drops) files."""
    d = root / "ml-100k"
    d.mkdir(parents=True, exist_ok=True)
    files = {**FILES, **{k.replace("_", "."): v for k, v in changes.items()}}
    for name, text in files.items():
        if text is not None:
            (d / name).write_bytes(text.encode("latin-1"))
    return d


def zip_dir(d: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as z:
        for f in sorted(d.iterdir()):
            z.write(f, f"ml-100k/{f.name}")
    return target
