"""`python -m lct <command>`: the same as the `lct` console script (what the workflow's rules call, so
a per-rule conda env needs only the repository on PYTHONPATH, not an installed `lct`)."""

import sys

from lct.cli import main

if __name__ == "__main__":
    sys.exit(main())
