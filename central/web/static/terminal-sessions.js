// Who is connected where (refreshed every 5 s) and the End buttons of open terminal sessions
// (one's own; anyone's for an admin).
"use strict";
(() => {
  const table = document.getElementById("terminal-live");
  if (!table) return;
  const user = table.dataset.user;
  const isAdmin = central.role === "admin";

  async function refresh() {
    let data;
    try { data = await central.api("GET", "/api/v1/terminal"); } catch (e) { return; }
    const body = table.tBodies[0];
    const now = Date.now() / 1000;
    const rows = data.live.map((s) => central.el("tr", {"data-session": s.id},
      central.el("td", {}, central.el("a", {href: `/terminal/sessions/${s.id}`}, String(s.id))),
      central.el("td", {text: s.user}),
      central.el("td", {}, central.el("a", {href: `/servers/${encodeURIComponent(s.server)}`}, s.server)),
      central.el("td", {text: s.account}), central.el("td", {class: "mono", text: s.address}),
      central.el("td", {text: central.fmtTime(s.started_at)}),
      central.el("td", {class: "num", text: Math.floor(s.idle_seconds) + "s"}),
      central.el("td", {}, isAdmin || s.user === user
        ? central.el("button", {type: "button", class: "small danger", "data-end-session": s.id}, "End") : "")));
    if (!rows.length) rows.push(central.el("tr", {class: "empty"}, central.el("td", {colspan: 8, text: "Nobody is connected."})));
    body.replaceChildren(...rows);
    table.dataset.refreshed = String(Math.floor(now));
  }
  window.centralRefreshLive = refresh;
  setInterval(refresh, 5000);

  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest("[data-end-session]");
    if (!button) return;
    const id = button.dataset.endSession;
    if (!await central.ask(`End terminal session ${id}?`, "The shell on the host is closed; the recording stays.", "End session")) return;
    try {
      await central.api("POST", `/api/v1/terminal/sessions/${id}/end`);
    } catch (err) {
      await central.show("Could not end the session", err.message);
    }
    refresh();
  });
})();
