// Alerts (the list and one alert): acknowledge, silence (prefilled from an alert), end a silence; each asks first.
"use strict";

(() => {
  const {api, act, fmtTime} = central;
  const reload = (r) => { if (r) location.reload(); };

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    if (!b) return;
    if (b.dataset.ack) {
      act(`Acknowledge alert ${b.dataset.ack}? Its repeat notifications stop; its resolution is still sent.`, "Acknowledge",
          () => api("POST", `/api/v1/alerts/${b.dataset.ack}/ack`),
          (a) => ["Acknowledged", `${a.rule} on ${a.server} acknowledged by ${a.acked_by}`, ""]).then(reload);
    } else if (b.dataset.unsilence) {
      act(`End silence ${b.dataset.unsilence} now?`, "End silence",
          () => api("DELETE", `/api/v1/silences/${b.dataset.unsilence}`),
          (s) => ["Silence ended", `silence ${s.id} ended`, ""]).then(reload);
    } else if (b.dataset.silenceRule !== undefined) {
      const form = document.getElementById("silence-form");
      form.server.value = b.dataset.silenceServer;
      form.rule.value = b.dataset.silenceRule;
      form.tag.value = "";
      form.comment.focus();
    }
  });

  const form = document.getElementById("silence-form");
  // /alerts?rule=R&server=S#silence-form (the alert page's and server page's Silence…) prefills it
  const wanted = new URLSearchParams(location.search);
  if (form && (wanted.has("rule") || wanted.has("server"))) {
    form.rule.value = wanted.get("rule") || "";
    form.server.value = wanted.get("server") || "";
    form.comment.focus();
  }
  if (form) {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const body = {duration: form.duration.value.trim(), comment: form.comment.value.trim()};
      for (const k of ["server", "rule", "tag"]) if (form[k].value.trim()) body[k] = form[k].value.trim();
      const what = ["server", "rule", "tag"].filter((k) => body[k]).map((k) => `${k} ${body[k]}`).join(", ") || "nothing";
      act(`Silence notifications of alerts matching ${what} for ${body.duration}?`, "Silence",
          () => api("POST", "/api/v1/silences", body),
          (s) => ["Silenced", `silence ${s.id} until ${fmtTime(s.ends_at)}`, ""]).then(reload);
    });
  }
})();
