"""`python -m bot`, the same as the `joinbridge` command: see bot/cli.py."""

import sys

from bot.cli import entry

sys.exit(entry())
