// The Logs card (server and container pages): the last lines of a unit's journal or a container's
// log from GET /api/v1/servers/NAME/logs, shown as text (never markup), refreshed every 3 s while
// "follow" is on. A name with a unit suffix is a unit, anything else a container (as the CLI).
"use strict";

(() => {
  const form = document.getElementById("logs-form");
  if (!form) return;
  const {api, fmtTime} = central;
  const head = document.getElementById("server") || document.getElementById("container");
  const server = head.dataset.server || head.dataset.name;
  const out = document.getElementById("logs-out"), info = document.getElementById("logs-info");
  const UNIT = /\.(service|timer|socket|mount|scope|slice|target|path|swap|device|automount)$/;
  let timer = null;

  async function show() {
    const target = document.getElementById("logs-target").value.trim();
    const lines = Number(document.getElementById("logs-lines").value) || 100;
    if (!target) return;
    const kind = UNIT.test(target) ? "unit" : "container";
    const url = `/api/v1/servers/${encodeURIComponent(server)}/logs?${kind}=${encodeURIComponent(target)}&lines=${lines}`;
    try {
      const r = await api("GET", url);
      out.textContent = r.lines.map((l) => `${l.ts == null ? "-" : fmtTime(l.ts)} ${l.identifier || ""}${l.pid ? "[" + l.pid + "]" : ""}: ${l.message}`).join("\n");
      out.hidden = false;
      out.scrollTop = out.scrollHeight;
      info.textContent = `${r.count} lines of ${r.name} (${r.source})${r.truncated ? ", cut to the size cap" : ""}, audit #${r.audit_id}`;
    } catch (err) {
      info.textContent = "logs failed: " + err.message;
    }
  }
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    show();
    clearInterval(timer);
    timer = document.getElementById("logs-follow").checked ? setInterval(() => { if (!document.hidden) show(); }, 3000) : null;
  });
  document.getElementById("logs-follow").addEventListener("change", (ev) => {
    if (!ev.target.checked) { clearInterval(timer); timer = null; }
  });
})();
