"""Entry point of the frozen app (PyInstaller, see build.spec): the `lesionlens` command line.

No arguments (a double-click, the desktop entry, the Start menu) opens the window; every
`lesionlens` command works as in a Python installation, `--self-test` included.
"""

import multiprocessing
import sys

from desktop_app.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # harmless where unused; required if a process pool is added
    sys.exit(main())
