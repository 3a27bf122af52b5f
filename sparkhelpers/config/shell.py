"""``sparkhelpers config shell``: the resolved configuration as bash assignments for lib/common.sh.

The entry scripts never ``source`` a config file. Python parses both files (refusing anything bash
would execute, naming file:line), applies the one precedence rule (``resolve``) and prints one
``KEY='value'`` line per key, each value through the one quoting filter; common.sh ``eval``s them.
So bash and Python cannot disagree, and nothing in a config file ever runs.

Printed: upper-case keys only, never a secret (bash needs none, and ``SPARK_DEBUG=1`` traces every
assignment), never a name bash itself reads (``PATH``, ``IFS``, ``PS4``...: a config file must not
change how the script runs). The assignments are plain (not exported), so a key that only a file
sets does not reach child processes' environment; the Python core reads the files itself.

``fast_main`` serves ``sparkhelpers config shell`` without importing Typer (every script calls it
once, so it is kept to the parser and the quoting filter).
"""

from __future__ import annotations

import re
import sys

from sparkhelpers.config import Config, is_secret, load_config
from sparkhelpers.errors import SparkError
from sparkhelpers.runner import shell_quote

_KEY = re.compile(r"[A-Z][A-Z0-9_]*")
# Variables bash (or our common.sh) reads or owns: never assigned from a config file.
_BASH_OWNED = re.compile(
    r"BASH\w*|SHELLOPTS|IFS|PATH|CDPATH|ENV|GLOBIGNORE|HOME|PS[0-4]|PROMPT_COMMAND|OPT(IND|ARG|ERR)|FUNCNEST"
    r"|TMOUT|HIST\w*|LANG|LANGUAGE|LC_\w+|UID|EUID|PPID|GROUPS|HOSTNAME|HOSTTYPE|MACHTYPE|OSTYPE|SHELL|SHLVL"
    r"|TERM|PWD|OLDPWD|RANDOM|SRANDOM|SECONDS|LINENO|EPOCH\w+|PIPESTATUS|DIRSTACK|FUNCNAME|COMP\w+|INPUTRC"
    r"|MAIL\w*|POSIXLY_CORRECT|EXECIGNORE|TIMEFORMAT|SPARK_HOME|SCRIPT_NAME|SCRIPT_PATH|SPARK_LOCK_FD"
    r"|SPARK_DEBUG|SPARK_CONFIG|SPARK_CONFIG_DEFAULTS"
)


def exported_to_shell(key: str) -> bool:
    return bool(_KEY.fullmatch(key)) and not _BASH_OWNED.fullmatch(key) and not is_secret(key)


def assignments(cfg: Config) -> list[str]:
    """``KEY=quoted`` lines, sorted, for every key bash may see."""
    return [f"{key}={shell_quote(cfg.settings[key].value)}" for key in sorted(cfg.settings) if exported_to_shell(key)]


def render(cfg: Config | None = None) -> str:
    lines = assignments(cfg or load_config())
    return "".join(f"{line}\n" for line in lines)


def fast_main() -> int:
    """``sparkhelpers config shell`` without the CLI framework; errors look like the CLI's."""
    try:
        sys.stdout.write(render())
    except SparkError as exc:
        print(f"sparkhelpers: {exc.message}", file=sys.stderr)
        if exc.fix:
            print(f"sparkhelpers: fix: {exc.fix}", file=sys.stderr)
        return exc.exit_code
    return 0
