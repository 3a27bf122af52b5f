"""README's "Failure modes" table is checked against the code and the tests: every row's message
(the first `quoted` fragment of "What you see") is printed by the code and asserted by a test."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- failure-modes:begin -->", "<!-- failure-modes:end -->"


def rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    assert BEGIN in text and END in text, "README lost its Failure modes table"
    lines = text.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()
    out = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[2:]]  # skip header, rule
    return [r for r in out if r and r[0]]


def corpus(root: Path, exts: tuple[str, ...], skip: str = "") -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.rglob("*"))
                     if p.is_file() and p.suffix in exts and p.name != skip)


def test_every_row_has_three_columns_and_a_message():
    table = rows()
    assert len(table) >= 15
    for row in table:
        assert len(row) == 3 and all(row), row
        assert re.search(r"`[^`]+`", row[0]), f"no quoted message in {row[0]!r}"


def test_every_message_is_printed_by_the_code_and_asserted_by_a_test():
    code = corpus(ROOT / "sparkhelpers", (".py", ".sh", ".j2"))
    tests = corpus(ROOT / "tests", (".py",), skip=Path(__file__).name)
    missing = []
    for row in rows():
        message = re.search(r"`([^`]+)`", row[0]).group(1)
        where = [name for name, text in (("code", code), ("tests", tests)) if message not in text]
        if where:
            missing.append(f"{message!r} not in the {' or '.join(where)}")
    assert not missing, "; ".join(missing)
