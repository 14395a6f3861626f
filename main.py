"""Inkpunk Studio, from a source checkout: `python main.py` opens the app, `python main.py generate ...` is the
command line, `python main.py --self-test` checks an installation. See inkpunk_studio/__main__.py."""

import sys

from inkpunk_studio.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
