import pytest

from sparkhelpers.config.envfile import EnvFileError, expand, parse, quote


def values(text: str, env: dict | None = None) -> dict:
    variables = dict(env or {})
    for a in parse(text):
        variables[a.key] = expand(a.segments, variables)
    return {k: v for k, v in variables.items() if not env or k not in env or v != env[k]}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A=1", {"A": "1"}),
        ("A=", {"A": ""}),
        ("export A=x", {"A": "x"}),
        ("A='a b # c'", {"A": "a b # c"}),
        ('A="a \\"q\\" $B"\nB=2', {"A": 'a "q" ', "B": "2"}),
        ("B=2\nA=\"x${B}y\"", {"A": "x2y", "B": "2"}),
        ("A=1 # trailing comment", {"A": "1"}),
        ("A=x#y", {"A": "x#y"}),
        ("A=${U:-dflt}", {"A": "dflt"}),
        ("A=${U-dflt}", {"A": "dflt"}),
        ("U=\nA=${U-dflt}\nB=${U:-dflt}", {"U": "", "A": "", "B": "dflt"}),
        ("A='it'\\''s'", {"A": "it's"}),
        ("A=a\\ b", {"A": "a b"}),
        ('A="line1\nline2"', {"A": "line1\nline2"}),
        ("A=$", {"A": "$"}),
        ('A="${U:-a b}"', {"A": "a b"}),
        ("A=~/x", {"A": "/home/t/x"}),
        ("A=x~", {"A": "x~"}),
        ("  # only a comment\n\n\tA=1;B=2", {"A": "1", "B": "2"}),
    ],
)
def test_values(text, expected):
    got = values(text, {"HOME": "/home/t"})
    got.pop("HOME", None)
    assert got == expected


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("A=$(id)", 1, "command substitution"),
        ("\nA=`id`", 2, "command substitution"),
        ("A=a b", 1, "quotes"),
        ("A='open", 1, "unterminated"),
        ('A="open', 1, "unterminated"),
        ("echo hi", 1, "expected '='"),
        ("A+=1", 1, "append"),
        ("A=${B:=x}", 1, "unsupported expansion"),
        ("A=1 && B=2", 1, "quotes"),
    ],
)
def test_rejects_what_bash_would_execute(text, line, fragment):
    with pytest.raises(EnvFileError) as info:
        parse(text, "f.env")
    assert info.value.line == line
    assert fragment in str(info.value)


@pytest.mark.parametrize("value", ["", "plain", "a b", "it's", "$HOME", 'q"q', "x\ny", "`id`", "a\\b"])
def test_quote_round_trips(value):
    assert values(f"A={quote(value)}") == {"A": value}
