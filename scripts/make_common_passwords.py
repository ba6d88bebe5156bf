"""Regenerate ``oidc_server/data/common-passwords.txt``, the common-password blocklist.

NIST SP 800-63B (section 5.1.1.2) says verifiers should reject passwords that appear in a
list of commonly used or compromised values. This script writes the N most common passwords
(10,000 by default), most common first, taken from the ``passwords`` frequency list that
ships inside the ``zxcvbn`` package on PyPI (MIT licence). Upstream zxcvbn built that list
from Mark Burnett's Xato 10-million-password corpus, ranked by how often each one occurs.

zxcvbn is not a dependency of the server. Install it in a throwaway virtualenv and run this
script with that interpreter, from the repository root::

    python3.11 -m venv /tmp/zxcvbn-venv
    /tmp/zxcvbn-venv/bin/pip install zxcvbn==4.5.0
    /tmp/zxcvbn-venv/bin/python scripts/make_common_passwords.py

Options: ``--count N`` changes how many passwords are kept, and ``--output PATH`` writes
somewhere else. The same zxcvbn version always gives the same file, byte for byte.

Output format: UTF-8, one lowercase password per line, ``\\n`` line endings, and a newline
at the end. A short ``#`` header names the source and the licence, and whoever reads the
file skips lines that start with ``#``. Entries keep the source's rank order; duplicates
that only appear after lowercasing are dropped, and so are any entries that are empty,
contain whitespace or start with ``#``. Short passwords are kept: the minimum length rule is
checked separately.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from pathlib import Path

DEFAULT_COUNT = 10_000
DEFAULT_OUTPUT = (
    Path(__file__).resolve().parent.parent / "oidc_server" / "data" / "common-passwords.txt"
)


def ranked_passwords() -> list[str]:
    """Return zxcvbn's ``passwords`` frequency list, most common first."""
    try:
        from zxcvbn.frequency_lists import FREQUENCY_LISTS
    except ImportError:
        sys.exit("zxcvbn is not installed; see this script's docstring for how to run it")
    return list(FREQUENCY_LISTS["passwords"])


def select(passwords: list[str], count: int) -> list[str]:
    """Return the first ``count`` usable entries, lowercased and deduplicated, in rank order."""
    chosen: list[str] = []
    seen: set[str] = set()
    for raw in passwords:
        word = raw.lower()
        if not word or word.startswith("#") or any(c.isspace() for c in word) or word in seen:
            continue
        seen.add(word)
        chosen.append(word)
        if len(chosen) == count:
            break
    if len(chosen) < count:
        sys.exit(f"source list has only {len(chosen)} usable entries, {count} requested")
    return chosen


def header(count: int) -> list[str]:
    """Return the ``#`` comment lines that name the source and the licence."""
    return [
        f"# Top {count} passwords by frequency rank: zxcvbn {version('zxcvbn')} (PyPI), "
        'FREQUENCY_LISTS["passwords"] (from the Xato 10M-password corpus).',
        "# Licence: MIT (zxcvbn-python, Copyright (c) 2016 Daniel Wolf; port of Dropbox's "
        "zxcvbn, MIT). Lowercased, one per line.",
        "# Regenerate with scripts/make_common_passwords.py; do not edit by hand.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="passwords to keep")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="file to write")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")

    words = select(ranked_passwords(), args.count)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([*header(args.count), *words]) + "\n"
    args.output.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {len(words)} passwords to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
