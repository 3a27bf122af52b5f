"""The ``sparkhelpers`` console script and ``python -m sparkhelpers``.

Every entry script runs ``sparkhelpers config shell`` once (lib/common.sh), so that one command is
answered before the CLI framework is imported; everything else goes to ``sparkhelpers.cli``.
"""

import sys


def main() -> int | None:
    if sys.argv[1:] == ["config", "shell"]:
        from sparkhelpers.config.shell import fast_main

        return fast_main()
    from sparkhelpers.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
