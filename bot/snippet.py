"""The landing-page snippet the bot hands out at onboarding."""

from __future__ import annotations

TEMPLATE = """<!-- Joinbridge: personal invite links for {channel} -->
<a id="jb-join" href="{tracker}/track/invite?channelId={channel_q}">Join {channel}</a>
<script>
(function () {{
  var api = "{tracker}/api/v1/events", channel = "{channel}";
  function cookie(n) {{
    var m = document.cookie.match("(?:^|; )" + n + "=([^;]*)");
    return m ? decodeURIComponent(m[1]) : undefined;
  }}
  function post(path, body) {{
    return fetch(api + "/" + path, {{method: "POST", credentials: "include",
      headers: {{"Content-Type": "application/json"}}, body: JSON.stringify(body)}})
      .then(function (r) {{ return r.json(); }});
  }}
  post("visit", {{href: location.href, referrer: document.referrer || undefined,
    tempId: cookie("adtarget_temp_id"), fbc: cookie("_fbc"), fbp: cookie("_fbp")}})
    .then(function (visit) {{
      // Meta's pixel may set _fbp after this ran: send it when it appears.
      if (!cookie("_fbp")) setTimeout(function () {{
        if (cookie("_fbp")) post("update-fbp", {{tempId: visit.tempId, fbp: cookie("_fbp")}});
      }}, 3000);
      return post("invite", {{tempId: visit.tempId, channelId: channel}});
    }})
    .then(function (r) {{
      if (r.inviteLink) document.getElementById("jb-join").href = r.inviteLink;
    }})
    .catch(function () {{ /* the plain link above still works */ }});
}})();
</script>"""


def landing_snippet(tracker_url: str, channel: str) -> str:
    """HTML + JS: records the visit, fetches the visitor's link, points the button
    at it; without JavaScript the button goes through the redirect endpoint."""
    return TEMPLATE.format(
        tracker=tracker_url.rstrip("/"), channel=channel, channel_q=channel.replace("@", "%40")
    )
