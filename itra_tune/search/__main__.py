"""``python -m itra_tune.search``: see ``itra_tune.search.command``."""

import sys

from itra_tune import cli
from itra_tune.search.command import PROG, main

sys.exit(cli.run(PROG, main))
