// The overview: refresh stats and rows every 5 s in place (no reload), filter, sparklines, add a server.
"use strict";

(() => {
  const {api, fmtPct, fmtNum, fmtAgo, level, el} = central;
  const REFRESH_MS = 5000, SPARK_MS = 30000;
  const tbody = document.querySelector("#servers tbody");
  const fName = document.getElementById("f-name"), fTag = document.getElementById("f-tag"),
        fStatus = document.getElementById("f-status");
  const sparkAt = new Map();  // server name -> when its sparkline was last fetched

  const rowOf = (name) => tbody.querySelector(`tr[data-name="${CSS.escape(name)}"]`);
  const cell = (tr, f) => tr.querySelector(`[data-f="${f}"]`);
  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }
  function setClass(node, base, extra) {
    const cls = extra ? base + " " + extra : base;
    if (node.className !== cls) node.className = cls;
  }

  // The same markup as the template's server_row macro.
  function newRow(s) {
    const tr = el("tr", {"data-name": s.name},
      el("td", {"data-f": "name"}, el("a", {href: "/servers/" + encodeURIComponent(s.name), text: s.name}),
         el("div", {class: "sub host"})),
      el("td", {"data-f": "status"}, el("span", {class: "badge"}), el("div", {class: "sub reason"})),
      el("td", {"data-f": "cpu", "data-label": "CPU", class: "num"}), el("td", {"data-f": "mem", "data-label": "Memory", class: "num"}),
      el("td", {"data-f": "disk", "data-label": "Disk", class: "num"}), el("td", {"data-f": "load1", "data-label": "Load", class: "num"}),
      el("td", {"data-f": "spark", "data-label": "CPU, 1 h", class: "spark"}),
      el("td", {"data-f": "last_seen", "data-label": "Last seen"}), el("td", {"data-f": "tags", "data-label": "Tags"}));
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 100 24");
    svg.setAttribute("preserveAspectRatio", "none");
    cell(tr, "spark").append(svg);
    return tr;
  }

  function updateRow(tr, s, now) {
    const sm = s.sample || {};
    tr.dataset.status = s.status;
    tr.dataset.tags = s.tags.join(" ");
    // a server that does not answer keeps its last figures, greyed and without colour
    if (tr.classList.contains("stale") !== s.stale) tr.classList.toggle("stale", s.stale);
    const host = cell(tr, "name").querySelector(".host");
    const hostText = (s.hostname && s.hostname !== s.name ? s.hostname + " \u00b7 " : "") + s.host;
    if (host.textContent !== hostText) {
      host.replaceChildren(...(s.hostname && s.hostname !== s.name
        ? [el("span", {class: "hostname", text: s.hostname}), " \u00b7 " + s.host] : [s.host]));
    }
    const badge = cell(tr, "status").querySelector(".badge");
    setClass(badge, "badge", "status-" + s.status);
    setText(badge, s.status);
    setText(cell(tr, "status").querySelector(".reason"), s.status_text || s.status_reason || "");
    for (const [f, warn, crit] of [["cpu", 75, 90], ["mem", 75, 90], ["disk", 80, 90]]) {
      setText(cell(tr, f), fmtPct(sm[f]));
      setClass(cell(tr, f), "num", s.stale ? "" : level(sm[f], warn, crit));
    }
    setText(cell(tr, "load1"), fmtNum(sm.load1));
    const seen = cell(tr, "last_seen");
    seen.dataset.ts = s.last_seen == null ? "" : s.last_seen;
    setText(seen, fmtAgo(s.last_seen, now));
    const tags = cell(tr, "tags");
    if (Array.from(tags.children, (t) => t.textContent).join(" ") !== s.tags.join(" ")) {
      tags.replaceChildren(...s.tags.map((t) => el("span", {class: "tag", text: t})));
    }
  }

  function applyFilter() {
    const name = fName.value.trim().toLowerCase(), tag = fTag.value, status = fStatus.value;
    let shown = 0, total = 0;
    for (const tr of tbody.rows) {
      total++;
      const ok = (!name || tr.dataset.name.toLowerCase().includes(name)) &&
                 (!tag || tr.dataset.tags.split(" ").includes(tag)) &&
                 (!status || tr.dataset.status === status);
      if (tr.hidden === ok) tr.hidden = !ok;
      if (ok) shown++;
    }
    const noun = total === 1 ? "server" : "servers";
    document.getElementById("shown").textContent = shown === total ? `${total} ${noun}` : `${shown} of ${total} ${noun}`;
    document.getElementById("no-match").hidden = shown > 0 || total === 0;
  }

  function updateTagOptions(servers) {
    const tags = [...new Set(servers.flatMap((s) => s.tags))].sort();
    const have = Array.from(fTag.options).slice(1).map((o) => o.value);
    if (have.join("\n") === tags.join("\n")) return;
    const chosen = fTag.value;
    fTag.replaceChildren(el("option", {value: "", text: "all tags"}), ...tags.map((t) => el("option", {text: t})));
    fTag.value = tags.includes(chosen) ? chosen : "";
  }

  // CPU over the last hour as an SVG polyline (0..100 %), from the history endpoint: 120 points
  // keep its step under a minute, so it reads raw samples and a new server shows a line at once.
  async function drawSpark(tr) {
    const name = tr.dataset.name;
    sparkAt.set(name, Date.now());
    try {
      const h = await api("GET", `/api/v1/servers/${encodeURIComponent(name)}/history?range=1h&metrics=cpu&points=120`);
      const ts = h.series.ts, cpu = h.series.cpu, svg = cell(tr, "spark").querySelector("svg");
      const pts = [];
      for (let i = 0; i < ts.length; i++) {
        if (cpu[i] == null) continue;
        const x = ((ts[i] - h.start) / (h.end - h.start)) * 100;
        const y = 22 - (Math.min(100, Math.max(0, cpu[i])) / 100) * 20;
        pts.push(x.toFixed(1) + "," + y.toFixed(1));
      }
      let line = svg.querySelector("polyline");
      if (!line) {
        line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
        svg.append(line);
      }
      line.setAttribute("points", pts.join(" "));
      svg.dataset.points = String(pts.length);
      // a new server has no line yet: try again on the next refresh rather than in 30 s
      if (pts.length < 2) sparkAt.set(name, Date.now() - SPARK_MS + REFRESH_MS - 500);
    } catch (err) {
      sparkAt.delete(name);
    }
  }

  async function refreshSparks() {
    const now = Date.now();
    for (const tr of tbody.rows) {
      if (tr.hidden || now - (sparkAt.get(tr.dataset.name) || 0) < SPARK_MS) continue;
      await drawSpark(tr);  // one at a time: a big fleet never bursts the central
    }
  }

  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    const state = document.getElementById("refresh-state");
    try {
      const [list, fleet] = await Promise.all([api("GET", "/api/v1/servers?limit=1000"), api("GET", "/api/v1/fleet")]);
      for (const [k, v] of Object.entries(fleet)) {
        const node = document.querySelector(`[data-stat="${k}"]`);
        if (node) setText(node, String(v));
      }
      const names = new Set(list.servers.map((s) => s.name));
      for (const tr of Array.from(tbody.rows)) if (!names.has(tr.dataset.name)) tr.remove();
      let prev = null;
      for (const s of list.servers) {
        let tr = rowOf(s.name);
        if (!tr) tr = newRow(s);
        updateRow(tr, s, fleet.ts);
        // keep the API's order (by name) without moving rows that are already in place
        const want = prev ? prev.nextSibling : tbody.firstChild;
        if (want !== tr) tbody.insertBefore(tr, want);
        prev = tr;
      }
      updateTagOptions(list.servers);
      applyFilter();
      setText(state, "");
      state.className = "sub";
      tbody.dataset.refreshed = String(Number(tbody.dataset.refreshed || 0) + 1);
    } catch (err) {
      setText(state, "refresh failed: " + err.message);
      state.className = "sub error";
    } finally {
      busy = false;
    }
    refreshSparks();
  }

  for (const input of [fName, fTag, fStatus]) input.addEventListener("input", () => { applyFilter(); refreshSparks(); });
  applyFilter();
  refreshSparks();
  setInterval(refresh, REFRESH_MS);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });

  // Add a server: step 1 fetches the host key, the operator confirms its fingerprint, step 2 pins it.
  const form = document.getElementById("add-server");
  if (form) {
    document.getElementById("add-toggle").addEventListener("click", () => {
      form.hidden = !form.hidden;
      if (!form.hidden) form.elements.name.focus();
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {name: form.elements.name.value.trim(), host: form.host.value.trim(),
                    port: Number(form.port.value || 22), user: form.user.value.trim() || "root",
                    tags: form.tags.value.split(/[\s,]+/).filter(Boolean)};
      let probe;
      try {
        probe = await api("POST", "/api/v1/servers", body);
      } catch (err) {
        await central.show("Could not fetch the host key", err.message);
        return;
      }
      const fp = probe.confirm.fingerprint;
      const ok = await central.ask("Confirm the host key",
        `${body.host}:${body.port} presents this ${probe.confirm.algorithm} host key:\n\n${fp}\n\n` +
        "Compare it with the host's own (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) before trusting it.", "Trust and add");
      if (!ok) return;
      try {
        const res = await api("POST", "/api/v1/servers", {...body, fingerprint: fp});
        const agent = res.agent || {};
        await central.show(`Added ${res.server.name}`,
          agent.ok ? `The agent answers (version ${agent.version}).` : `Stored, but the agent does not answer yet: ${agent.error || agent.reason || ""}`,
          agent.ok ? "" : agent.hint || "");
        form.reset();
        form.hidden = true;
        refresh();
      } catch (err) {
        await central.show("Not added", err.message);
      }
    });
  }
})();
