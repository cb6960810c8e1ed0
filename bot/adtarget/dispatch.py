"""Whether AdTarget passed a conversion on to an ad platform, in words an owner reads.

AdTarget answers a conversion with `dispatched` (a send to an ad platform was
scheduled) or `dispatched: false`, `capiStatus: "skipped"` and a `warning`. Its
warnings are written for developers, and their exact text is not documented, so
the known ones are recognised by what they say and put in plain words; anything
else is shown as AdTarget wrote it, clipped. /stats (its most frequent warning)
and /lead (each conversion) both word it here.
"""

from __future__ import annotations

import re

WARNING_CLIP = 100  # an unknown warning is AdTarget's free text: keep a line short

# No fbc/fbp/gclid/ttclid/sccid matched a configured pixel (adtarget-api.md,
# /events/conversion): "No attribution signal matched a configured pixel".
NO_SIGNAL = (
    "no ad click id or browser id (fbc, fbp, gclid…) matched a pixel — check that the"
    " landing page sends fbc/fbp; campaign-link joins carry none"
)
_KNOWN = (
    (
        re.compile(r"\bno (attribution )?signals?\b|\bno\b.*\bmatch\w*\b.*\bpixel", re.I),
        NO_SIGNAL,
    ),
)

DISPATCHED = "passed on to the ad platform"
SKIPPED = "not passed on to an ad platform"
NO_REASON = "AdTarget gave no reason"


def warning_words(warning: str) -> str:
    """A warning from AdTarget in plain words; an unknown one as written, clipped."""
    for pattern, words in _KNOWN:
        if pattern.search(warning):
            return words
    text = " ".join(warning.split())
    if len(text) > WARNING_CLIP:
        text = text[: WARNING_CLIP - 1] + "…"
    return f"AdTarget says “{text}”"


def capi_words(capi_status: str) -> str:
    """AdTarget's capiStatus of a conversion (GET /leads), with what it means."""
    meaning = {"pending": DISPATCHED, "skipped": SKIPPED}.get(capi_status)
    return f"capi {capi_status}" + (f" ({meaning})" if meaning else "")


def dispatch_words(dispatched: bool | None, warning: str | None) -> str | None:
    """One delivered conversion: passed on or skipped (and why); None when AdTarget's
    answer is not known (a delivery confirmed later through /leads)."""
    if dispatched is None:
        return None if warning is None else warning_words(warning)
    if dispatched:
        return DISPATCHED + (f" ({warning_words(warning)})" if warning else "")
    return f"{SKIPPED}: {warning_words(warning) if warning else NO_REASON}"
