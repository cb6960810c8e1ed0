"""The landing-page snippet the bot hands out at onboarding.

examples/landing.html embeds exactly this snippet (tests/unit/tracker/test_landing_example.py
keeps the two in step), so what the browser test proves is what owners paste.
"""

from __future__ import annotations

import html
from string import Template
from urllib.parse import quote, urlsplit

# How long a click made before the tracker answered waits for the visitor's own
# link before it follows the href (the way in without the tracker).
CLICK_WAIT_MS = 2500

# The button's href is where it leads with no help from the tracker: the channel's
# public or fallback link, so a tracker that is down, slow or erring, a script
# error, or no JavaScript at all still lets the visitor join. The script only ever
# improves on it, with the visitor's own link. Its settings sit on the button, so
# an owner who moves the tracker behind a proxy path edits one attribute.
TEMPLATE = Template("""<!-- Joinbridge: personal invite links for $channel_text. Settings, on the
     button: href (the way in if the tracker fails), data-tracker, data-channel. -->
<a id="jb-join" href="$href" data-tracker="$tracker"
   data-channel="$channel"$policy>Join the channel</a>
<script>
(function () {
  // A click waits for the visitor's own link, $wait ms at most, then follows the href.
  var button = document.getElementById("jb-join"), waiting = true, held = false;
  function go() { if (held) { held = false; location.href = button.href; } }
  button.addEventListener("click", function (e) {
    if (!waiting || e.ctrlKey || e.metaKey || e.shiftKey) return;
    e.preventDefault();
    held = true;
    setTimeout(function () { waiting = false; go(); }, $wait);
  });
  var api = button.getAttribute("data-tracker") + "/api/v1/events";
  var channel = button.getAttribute("data-channel");
  var fbclid = new URLSearchParams(location.search).get("fbclid");
  function cookie(n) {
    var m = document.cookie.match("(?:^|; )" + n + "=([^;]*)");
    return m ? decodeURIComponent(m[1]) : undefined;
  }
  function keep(n, value, days) {
    document.cookie = n + "=" + encodeURIComponent(value) + "; Max-Age=" + days * 86400 +
      "; Path=/; SameSite=Lax";
  }
  function post(path, body) {
    return fetch(api + "/" + path, {method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
      .then(function (r) { if (!r.ok) throw new Error(path + ": " + r.status); return r.json(); });
  }
  // _fbc as Meta's pixel writes it (fb.1.<ms>.<fbclid>); a new ad click replaces it.
  if (fbclid && (cookie("_fbc") || "").split(".").slice(3).join(".") !== fbclid)
    keep("_fbc", "fb.1." + Date.now() + "." + fbclid, 90);
  var fbp = cookie("_fbp");
  new Promise(function (ok) { // a fetch that throws is a failure too
    ok(post("visit", {href: location.href, referrer: document.referrer || undefined,
      tempId: cookie("adtarget_temp_id"), fbc: cookie("_fbc"), fbp: fbp}));
  })
    .then(function (visit) {
      // On this page's own domain too, for a tracker on another domain.
      if (!cookie("adtarget_temp_id")) keep("adtarget_temp_id", visit.tempId, 365);
      // Meta's pixel sets _fbp after it loads: watch for it for 10 s.
      var tries = 0, timer = fbp ? 0 : setInterval(function () {
        var late = cookie("_fbp");
        if (late || ++tries >= 40) clearInterval(timer);
        if (late) post("update-fbp", {tempId: visit.tempId, fbp: late}).catch(function () {});
      }, 250);
      return post("invite", {tempId: visit.tempId, channelId: channel});
    })
    .then(function (r) { if (r.inviteLink) button.href = r.inviteLink; })
    .catch(function () { /* the href stays the way in without the tracker */ })
    .then(function () { waiting = false; go(); });
})();
</script>""")


def public_link(username: str) -> str:
    """A public channel's own link: no Telegram call, and nobody can revoke it."""
    return f"https://t.me/{quote(username, safe='')}"


def redirect_url(tracker_url: str, channel: str) -> str:
    """The tracker's redirect to a freshly minted link (GET /track/invite)."""
    return f"{tracker_url.rstrip('/')}/track/invite?channelId={quote(channel, safe='')}"


def landing_snippet(tracker_url: str, channel: str, fallback: str | None) -> str:
    """HTML + JS: records the visit, fetches the visitor's link, points the button
    at it. The button's href is `fallback` (the channel's public or fallback
    link), where the visitor goes whenever the tracker cannot help; None (no such
    link could be had) leaves it at the tracker's redirect, which needs the tracker.

    ValueError for a fallback that is not an http(s) URL: a `javascript:` href
    would run on the owner's page."""
    if fallback is not None and urlsplit(fallback).scheme not in ("https", "http"):
        raise ValueError(f"fallback link must be an http(s) URL, not {fallback!r}")
    # Without a fallback the button asks the browser to send the full page URL as
    # Referer to the tracker, so a click without JavaScript keeps its fbclid and
    # UTM; the fallback link is Telegram's, which has no use for them.
    policy = ' referrerpolicy="no-referrer-when-downgrade"' if fallback is None else ""
    href = fallback if fallback is not None else redirect_url(tracker_url, channel)
    # Escaped, no value can leave its attribute or close the comment; the script
    # reads them from the button, so none is ever inside JavaScript.
    return TEMPLATE.substitute(
        href=html.escape(href),
        tracker=html.escape(tracker_url.rstrip("/")),
        channel=html.escape(channel),
        channel_text=html.escape(channel),
        policy=policy,
        wait=CLICK_WAIT_MS,
    )
