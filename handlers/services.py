"""What the handlers are given: one typed object.

bot/factory.py builds it and hands it to the dispatcher as the workflow data
`services` (aiogram's dependency injection: a `Dispatcher(...)` keyword argument
reaches every handler with a parameter of that name). A handler takes
`services: Services` and reads the one it needs, so the names are checked by
mypy, not matched as strings at each update.

It lives with the handlers, not the factory: the handlers depend on what they
are given, never on how the bridge is assembled.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.admin.chart_command import ChartCommand
from bot.admin.commands import AdminCommands
from bot.admin.gate import AdminGate
from bot.admin.onboarding import Onboarding
from bot.adtarget.sync import ChannelSync
from bot.followups.lead_command import LeadCommand
from bot.followups.stay_command import StayCommand
from bot.ops.privacy import ForgetCommand


@dataclass(frozen=True, slots=True)
class Services:
    gate: AdminGate  # an admin's status changed: drop the cached answer
    onboarding: Onboarding  # the bot's own status in a channel, /track
    commands: AdminCommands  # the admin commands and the /stats buttons
    chart_command: ChartCommand  # /chart
    channel_sync: ChannelSync  # /sync (and once at start, bot/app.py)
    lead_command: LeadCommand  # /lead, /fire, /value
    stay_command: StayCommand  # /stay
    forget_command: ForgetCommand  # /forget
