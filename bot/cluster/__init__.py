"""Several bridge processes on one PostgreSQL (issue 20): which of them leads.

Every process serves the tracker; one, the leader, also polls Telegram, runs the
courier and fills the invite pools. `leadership.Leadership` elects it with an
advisory lock on a PostgreSQL session of its own, held under a lease so that a
stalled leader loses it too. docs/several-machines.md tells the operator's side.
"""
