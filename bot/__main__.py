"""`python -m bot`: see bot/cli.py for the commands."""

import os
import sys

from bot.cli import main

# Set once, here where the process starts and before any command creates a file:
# the database and its -wal, -shm and .lock files, backups, the data directory
# itself. They hold visitors' IPs and click ids; only the bridge's own user may
# read them (files 0600, directories 0700). Not in cli.main, which tests call
# in-process.
os.umask(0o077)
sys.exit(main())
