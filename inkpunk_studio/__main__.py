"""Inkpunk Studio's one entry point, shared by `python main.py`, `python -m inkpunk_studio`, the installed
`inkpunk-studio` launcher and the PyInstaller bundle.

    (no arguments)          open the app (`--checkpoint PATH`, `--data-dir DIR`)
    generate ...            command-line generation (see `generate --help`)
    --self-test             build a tiny model, generate once through the real window, verify, exit
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        from inkpunk_studio.cli import main as cli_main

        return cli_main(argv[1:])
    if "--self-test" in argv:
        from inkpunk_studio.selftest import main as selftest_main

        return selftest_main([a for a in argv if a != "--self-test"])
    from inkpunk_studio.app import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())
