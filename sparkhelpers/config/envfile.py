"""Reader for the safe subset of bash that config files are written in.

The files look like bash and mean what bash would make of them, but nothing ever sources them:
this parser is the only reader (the scripts eval the quoted values ``config shell`` prints).
Supported: ``KEY=value``, ``export KEY=value``, ``# comments`` (whole-line, or after whitespace),
'single' and "double" quotes (also spanning lines), backslash escapes, ``$VAR``, ``${VAR}``,
``${VAR:-word}``, ``${VAR-word}`` and a leading ``~``. Anything that bash
would execute (``$(...)``, backticks, commands, ``+=``) is an error naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvFileError(ValueError):
    """A config file uses syntax outside the supported subset."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.detail = path, line, message


# A value is a list of segments: literal text or a variable reference.
@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Ref:
    name: str
    op: str  # "" (plain), ":-" (unset or empty), "-" (unset)
    default: tuple  # segments


@dataclass(frozen=True)
class Assignment:
    key: str
    segments: tuple
    line: int
    exported: bool


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.s, self.i, self.path = text, 0, path

    # -- helpers -----------------------------------------------------------------------------
    def _line(self, pos: int | None = None) -> int:
        return self.s.count("\n", 0, self.i if pos is None else pos) + 1

    def _err(self, message: str, pos: int | None = None) -> EnvFileError:
        return EnvFileError(self.path, self._line(pos), message)

    def _peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def _skip_blanks(self) -> None:
        while self._peek() in (" ", "\t"):
            self.i += 1

    def _skip_comment(self) -> None:
        while self.i < len(self.s) and self.s[self.i] != "\n":
            self.i += 1

    # -- grammar -----------------------------------------------------------------------------
    def parse(self) -> list[Assignment]:
        out: list[Assignment] = []
        while self.i < len(self.s):
            self._skip_blanks()
            c = self._peek()
            if c in ("\n", ";"):
                self.i += 1
                continue
            if c == "" or c == "#":
                self._skip_comment()
                continue
            statement = self._statement()
            if statement is not None:
                out.append(statement)
        return out

    def _statement(self) -> Assignment | None:
        start = self.i
        exported = False
        if self.s.startswith("export", self.i) and self._peek_after("export") in (" ", "\t"):
            exported = True
            self.i += len("export")
            self._skip_blanks()
        m = _NAME.match(self.s, self.i)
        if not m:
            raise self._err("expected KEY=value", start)
        key = m.group(0)
        self.i = m.end()
        if self._peek() != "=":
            if exported and self._peek() in ("", "\n", " ", "\t", "#", ";"):
                # `export KEY` with no value only marks KEY for export; it sets nothing.
                self._end_of_statement()
                return None
            if self._peek(2) == "+=":
                raise self._err(f"{key}+= (append) is not supported; write the whole value", start)
            raise self._err(f"expected '=' after {key}", start)
        self.i += 1
        segments = tuple(self._word(stop_at_brace=False, quoted=False))
        self._end_of_statement()
        return Assignment(key, segments, self._line(start), exported)

    def _peek_after(self, word: str) -> str:
        return self.s[self.i + len(word) : self.i + len(word) + 1]

    def _end_of_statement(self) -> None:
        self._skip_blanks()
        c = self._peek()
        if c in ("", "\n", ";"):
            return
        if c == "#":
            self._skip_comment()
            return
        raise self._err("unquoted space in a value; put the value in quotes")

    def _word(self, stop_at_brace: bool, quoted: bool) -> list:
        """Segments of one word, up to unquoted whitespace (or ``}`` inside ``${...}``)."""
        segs: list = []
        lit: list[str] = []

        def flush() -> None:
            if lit:
                segs.append(Literal("".join(lit)))
                lit.clear()

        at_start = True
        while self.i < len(self.s):
            c = self.s[self.i]
            if stop_at_brace and c == "}":
                break
            if not stop_at_brace and c in (" ", "\t", "\n", ";"):
                break
            if c in ("&", "|", "<", ">", "(", ")") and not stop_at_brace:
                raise self._err(f"'{c}' is shell syntax, not a value; put the value in quotes")
            if c == "~" and at_start and not quoted:
                nxt = self.s[self.i + 1 : self.i + 2]
                if nxt in ("", "/", " ", "\t", "\n", ";", "}"):
                    flush()
                    segs.append(Ref("HOME", "", ()))
                    self.i += 1
                    at_start = False
                    continue
            at_start = False
            if c == "'":
                if quoted:
                    lit.append(c)
                    self.i += 1
                    continue
                end = self.s.find("'", self.i + 1)
                if end < 0:
                    raise self._err("unterminated single quote")
                lit.append(self.s[self.i + 1 : end])
                self.i = end + 1
            elif c == '"':
                if quoted:
                    break
                self.i += 1
                flush()
                segs.extend(self._double_quoted())
            elif c == "\\":
                nxt = self.s[self.i + 1 : self.i + 2]
                if nxt == "\n":
                    self.i += 2  # line continuation
                elif nxt == "":
                    lit.append("\\")
                    self.i += 1
                else:
                    lit.append(nxt)
                    self.i += 2
            elif c == "`":
                raise self._err("command substitution (`...`) is not supported; write the value itself")
            elif c == "$":
                ref = self._dollar(quoted=quoted)
                if isinstance(ref, str):
                    lit.append(ref)
                else:
                    flush()
                    segs.append(ref)
            else:
                lit.append(c)
                self.i += 1
        flush()
        return segs

    def _double_quoted(self) -> list:
        segs: list = []
        lit: list[str] = []
        while True:
            if self.i >= len(self.s):
                raise self._err("unterminated double quote")
            c = self.s[self.i]
            if c == '"':
                self.i += 1
                break
            if c == "\\":
                nxt = self.s[self.i + 1 : self.i + 2]
                if nxt in ("$", "`", '"', "\\"):
                    lit.append(nxt)
                    self.i += 2
                elif nxt == "\n":
                    self.i += 2
                else:
                    lit.append("\\")
                    self.i += 1
            elif c == "`":
                raise self._err("command substitution (`...`) is not supported; write the value itself")
            elif c == "$":
                ref = self._dollar(quoted=True)
                if isinstance(ref, str):
                    lit.append(ref)
                else:
                    if lit:
                        segs.append(Literal("".join(lit)))
                        lit.clear()
                    segs.append(ref)
            else:
                lit.append(c)
                self.i += 1
        if lit:
            segs.append(Literal("".join(lit)))
        return segs

    def _dollar(self, quoted: bool) -> Ref | str:
        """Parse at a ``$``; returns a Ref, or the literal text when ``$`` is not an expansion."""
        nxt = self.s[self.i + 1 : self.i + 2]
        if nxt == "(":
            raise self._err("command substitution $(...) is not supported; write the value itself")
        if nxt == "{":
            self.i += 2
            m = _NAME.match(self.s, self.i)
            if not m:
                raise self._err("only ${NAME}, ${NAME:-default} and ${NAME-default} are supported")
            name = m.group(0)
            self.i = m.end()
            if self._peek() == "}":
                self.i += 1
                return Ref(name, "", ())
            for op in (":-", "-"):
                if self.s.startswith(op, self.i):
                    self.i += len(op)
                    default = self._word(stop_at_brace=True, quoted=quoted)
                    if self._peek() != "}":
                        raise self._err("missing '}'")
                    self.i += 1
                    return Ref(name, op, tuple(default))
            raise self._err(f"unsupported expansion after ${{{name}; use ${{{name}:-default}}")
        m = _NAME.match(self.s, self.i + 1)
        if m:
            self.i = m.end()
            return Ref(m.group(0), "", ())
        self.i += 1
        return "$"


def parse(text: str, path: str = "<string>") -> list[Assignment]:
    """Parse config text into assignments, in file order."""
    return _Parser(text, path).parse()


def parse_file(path: Path) -> list[Assignment]:
    return parse(path.read_text(encoding="utf-8"), str(path))


def expand(segments: tuple, variables: Mapping[str, str]) -> str:
    """Evaluate a value's segments against the variables set so far, as bash would."""
    out: list[str] = []
    for seg in segments:
        if isinstance(seg, Literal):
            out.append(seg.text)
            continue
        value = variables.get(seg.name)
        if seg.op == ":-" and not value or seg.op == "-" and value is None:
            value = expand(seg.default, variables)
        out.append(value or "")
    return "".join(out)


def quote(value: str) -> str:
    """Single-quote a value for writing back into a config file (and for bash)."""
    if value and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"
