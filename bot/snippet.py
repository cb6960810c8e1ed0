"""The landing-page snippet the bot hands out at onboarding.

examples/landing.html embeds exactly this snippet (tests/test_landing_example.py
keeps the two in step), so what the browser test proves is what owners paste.
"""

from __future__ import annotations

import html
from string import Template
from urllib.parse import quote

# The button's href is the snippet's only setting: the script reads the tracker's
# address and the channel from it, so an owner who moves the tracker behind a
# proxy path edits one URL, and the button works without JavaScript as it stands.
TEMPLATE = Template("""<!-- Joinbridge: personal invite links for $channel_text.
     The button's href is the only setting: <tracker URL>/track/invite?channelId=<channel>. -->
<a id="jb-join" href="$href" referrerpolicy="no-referrer-when-downgrade">Join the channel</a>
<script>
(function () {
  var button = document.getElementById("jb-join"), target = new URL(button.href);
  var api = target.href.split("/track/invite")[0] + "/api/v1/events";
  var channel = target.searchParams.get("channelId");
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
  post("visit", {href: location.href, referrer: document.referrer || undefined,
    tempId: cookie("adtarget_temp_id"), fbc: cookie("_fbc"), fbp: fbp})
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
    .catch(function () { /* the button's own href still works, through the tracker */ });
})();
</script>""")


def landing_snippet(tracker_url: str, channel: str) -> str:
    """HTML + JS: records the visit, fetches the visitor's link, points the button
    at it; without JavaScript the button goes through the redirect endpoint."""
    href = f"{tracker_url.rstrip('/')}/track/invite?channelId={quote(channel, safe='')}"
    # Escaped, a channel name can neither leave the attribute nor close the comment.
    return TEMPLATE.substitute(href=html.escape(href), channel_text=html.escape(channel))
