"""``python -m itra_tune.search``: see ``itra_tune.search.command``."""

from itra_tune import cli
from itra_tune.search.command import PROG, main

cli.exit_now(cli.run(PROG, main))
