"""The Telegram Bot API simulator moved into the package (bot/simulators/telegram.py)
so `python -m bot sandbox` can ship it; tests keep importing it from here."""

from bot.simulators.telegram import ApiError, Call, FakeTelegram

__all__ = ["ApiError", "Call", "FakeTelegram"]
