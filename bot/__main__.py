"""`python -m bot`, the same as the `joinbridge` command: see bot/cli/__init__.py."""

import sys

from bot.cli import entry

sys.exit(entry())
