"""``python -m itra_tune.train``: the command line of production training (``itra_tune.production``).

In Python, call the function ``itra_tune.train(config, ...)``; this module exists for ``-m`` only.
"""

from __future__ import annotations

import sys

from itra_tune import cli
from itra_tune.production import main

if __name__ == "__main__":
    sys.exit(cli.run("python -m itra_tune.train", main))
