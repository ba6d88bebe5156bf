"""docs/security.md stays true: every test it names exists, and no RFC section goes missing.

Tests are found by parsing the test files with ``ast`` (module-level functions and methods of
``Test*`` classes), so a renamed or deleted test fails this check instead of leaving a dead
reference behind.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"

#: ``tests/path/to/test_file.py::test_name`` or ``...::TestClass::test_name``.
REFERENCE = re.compile(r"`?(tests/[\w/]+\.py)::((?:\w+::)?\w+)`?")
APPLIES = {"yes", "partly", "no", "pending"}

#: RFC 6819 §4, every threat (the subsections of 4.1 to 4.6).
RFC6819 = [
    *(f"4.1.{n}" for n in range(1, 6)),
    *(f"4.2.{n}" for n in range(1, 5)),
    *(f"4.3.{n}" for n in range(1, 6)),
    *(f"4.4.1.{n}" for n in range(1, 14)),
    *(f"4.4.2.{n}" for n in range(1, 7)),
    *(f"4.4.3.{n}" for n in range(1, 7)),
    "4.4.4",
    *(f"4.5.{n}" for n in range(1, 5)),
    *(f"4.6.{n}" for n in range(1, 8)),
]
#: RFC 9700 §2 (best practices) and §4 (attacks and mitigations).
RFC9700 = [
    "2.1",
    "2.1.1",
    "2.1.2",
    "2.2",
    "2.2.1",
    "2.2.2",
    "2.3",
    "2.4",
    "2.5",
    "2.6",
    *(f"4.{n}" for n in range(1, 19)),
]


@dataclass(frozen=True)
class Row:
    section: str
    applies: str
    proof: str


@functools.cache
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def table_rows(heading: str) -> list[Row]:
    """The rows of the table under ``heading`` (a ``## `` heading of the doc)."""
    text = doc_text()
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    rows = []
    for line in text[start : end if end != -1 else None].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"\d+(\.\d+)+", cells[0]):
            rows.append(Row(cells[0], cells[2], cells[4]))
    return rows


@functools.cache
def defined_tests(path: str) -> frozenset[str]:
    """The test names defined in a test file: ``test_x`` and ``TestY::test_x``."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{item.name}")
    return frozenset(n for n in names if n.split("::")[-1].startswith("test"))


def test_every_test_the_doc_names_exists() -> None:
    references = REFERENCE.findall(doc_text())
    assert len(references) > 50  # the pattern really finds the doc's references
    missing = [
        f"{path}::{name}"
        for path, name in references
        if not (ROOT / path).is_file() or name not in defined_tests(path)
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("heading", "sections"),
    [
        ("RFC 6819: the threat model", RFC6819),
        ("RFC 9700: the Security Best Current Practice", RFC9700),
    ],
)
def test_every_section_of_the_rfc_has_its_row(heading: str, sections: list[str]) -> None:
    rows = table_rows(heading)
    assert [row.section for row in rows] == sections


@pytest.mark.parametrize(
    "heading", ["RFC 6819: the threat model", "RFC 9700: the Security Best Current Practice"]
)
def test_every_point_that_applies_names_the_test_that_proves_it(heading: str) -> None:
    rows = table_rows(heading)
    assert {row.applies for row in rows} <= APPLIES
    unproven = [
        row.section
        for row in rows
        if row.applies in {"yes", "partly"} and not REFERENCE.search(row.proof)
    ]
    assert unproven == []


def test_the_reference_pattern_and_the_test_finder_agree_with_a_known_test() -> None:
    assert REFERENCE.fullmatch("`tests/test_security_doc.py::test_every_test_the_doc_names_exists`")
    assert "test_every_test_the_doc_names_exists" in defined_tests("tests/test_security_doc.py")
    assert "test_no_such_test" not in defined_tests("tests/test_security_doc.py")


def test_the_password_grant_deviation_is_explained() -> None:
    text = doc_text()
    deviations = text[text.index("## Deviations") : text.index("## RFC 6819")]
    for needed in ("first-party", "clients.create_client", "PasswordGrant", "§2.4"):
        assert needed in deviations
