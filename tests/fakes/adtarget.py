"""The AdTarget simulator moved into the package (bot/simulators/adtarget.py) so
`python -m bot sandbox` can ship it; tests keep importing it from here."""

from bot.simulators.adtarget import FakeAdTarget, Received

__all__ = ["FakeAdTarget", "Received"]
