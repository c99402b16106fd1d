// One server: uPlot charts from the history endpoint (one shared cursor, legends showing the
// latest value), live process and service lists, actions with confirmation, and a stale state
// (greyed lists, actions off) while the server does not answer.
"use strict";

(() => {
  const {api, fmtPct, fmtNum, fmtBytes, fmtAgo, fmtTime, fmtDate, fmtClock, timeEl, el, act, canAct} = central;
  const head = document.getElementById("server");
  const NAME = head.dataset.name;
  const base = "/api/v1/servers/" + encodeURIComponent(NAME);
  const REFRESH_MS = 5000;
  let stale = head.dataset.stale === "true";

  // charts
  const rate = (v) => fmtBytes(v) + "/s";
  const CHARTS = [
    {id: "chart-cpu", metrics: ["cpu"], labels: ["CPU"], kind: "pct"},
    {id: "chart-mem", metrics: ["mem", "swap"], labels: ["memory", "swap"], kind: "pct"},
    {id: "chart-load", metrics: ["load1", "load5", "load15"], labels: ["1 min", "5 min", "15 min"], kind: "num"},
    {id: "chart-disk", metrics: ["disk"], labels: ["disk"], kind: "pct"},
    {id: "chart-diskio", metrics: ["disk_read", "disk_write"], labels: ["read", "write"], kind: "rate"},
    {id: "chart-net", metrics: ["net_rx", "net_tx"], labels: ["received", "sent"], kind: "rate"},
  ];
  const FORMAT = {pct: (v) => v.toFixed(1) + "%", num: (v) => fmtNum(v), rate};
  // Axis ticks: short, so they fit the axis (a legend has the precise value).
  function shortBytes(v) {
    const units = ["B", "K", "M", "G", "T"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (Math.abs(v) >= 10 || i === 0 ? v.toFixed(0) : v.toFixed(1)) + (i ? units[i] : "B") + "/s";
  }
  const TICK = {pct: (v) => v + "%", num: (v) => v.toFixed(v >= 10 ? 0 : 1), rate: shortBytes};
  const plots = new Map();
  let range = "1h";
  let sparse = true;  // a new server: redraw on every refresh until there is a line to draw
  let last = null;     // the last history answer

  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  // Ticks as 24 h clock times, or ISO-like dates once they are a day or more apart.
  function xTicks(u, splits, axisIdx, space, incr) {
    return splits.map((v) => {
      const d = new Date(v * 1000);
      if (incr >= 86400) return fmtDate(d).slice(5);
      return fmtClock(d, incr < 60);
    });
  }

  // The legend shows the newest value whenever the cursor is off the charts (not "–"): each
  // time uPlot sets it to no point, it is set again to the last point with a value.
  function showLatest(u) {
    if (u.cursor.idx != null) return;  // hovering: uPlot shows the point under the cursor
    for (let i = u.data[0].length - 1; i >= 0; i--) {
      if (u.data.slice(1).some((s) => s[i] != null)) {
        if (u.legend.idx !== i) u.setLegend({idx: i}, false);
        return;
      }
    }
  }

  function chartOpts(c, width) {
    const text = cssVar("--muted"), grid = cssVar("--chart-grid");
    const colors = [cssVar("--chart-1"), cssVar("--chart-2"), cssVar("--chart-3")];
    const fmt = FORMAT[c.kind];
    return {
      width, height: 180, title: document.getElementById(c.id).dataset.title,
      // 0-102 %: a line pegged at 100 % stays in view instead of half under the frame
      scales: {x: {time: true}, y: c.kind === "pct" ? {range: [0, 102]} : {range: (u, min, max) => [0, Math.max(max, c.kind === "num" ? 1 : 1024) * 1.1]}},
      axes: [
        {stroke: text, grid: {stroke: grid}, ticks: {stroke: grid}, values: xTicks},
        {stroke: text, grid: {stroke: grid}, ticks: {stroke: grid}, size: c.kind === "rate" ? 64 : 48,
         values: (u, vals) => vals.map((v) => TICK[c.kind](v))},
      ],
      series: [
        {label: "time", value: (u, v) => v == null ? "\u2013" : fmtTime(v)},
        ...c.metrics.map((m, i) => ({
          label: c.labels[i], stroke: colors[i], width: 1.5, fill: i === 0 ? colors[i] + "22" : undefined,
          value: (u, v) => v == null ? "\u2013" : fmt(v),
        })),
      ],
      cursor: {sync: {key: "server-" + NAME, setSeries: false}},
      legend: {live: true},
      hooks: {setLegend: [showLatest]},
    };
  }

  function plot(c, data) {
    const node = document.getElementById(c.id);
    let p = plots.get(c.id);
    if (p) {
      p.setData(data);
    } else {
      p = new uPlot(chartOpts(c, Math.max(260, node.clientWidth)), data, node);
      plots.set(c.id, p);
    }
    return p;
  }

  function render(h) {
    for (const c of CHARTS) {
      const node = document.getElementById(c.id);
      const data = [h.series.ts, ...c.metrics.map((m) => h.series[m])];
      node.dataset.points = String(data.slice(1).reduce((n, s) => n + s.filter((v) => v != null).length, 0));
      const p = plot(c, data);
      p.setScale("x", {min: h.start, max: h.end});
    }
  }

  async function drawCharts() {
    const metrics = [...new Set(CHARTS.flatMap((c) => c.metrics))].join(",");
    let h;
    try {
      h = await api("GET", `${base}/history?range=${range}&metrics=${metrics}&points=300`);
    } catch (err) {
      document.getElementById("history-source").textContent = "history failed: " + err.message;
      return;
    }
    last = h;
    document.getElementById("history-source").textContent = `${h.series.ts.length} points, ${h.source} data, step ${h.step}s`;
    sparse = h.series.ts.length < 2;
    render(h);
  }

  for (const b of document.querySelectorAll("#ranges button")) {
    b.addEventListener("click", () => {
      range = b.dataset.range;
      for (const o of document.querySelectorAll("#ranges button")) o.classList.toggle("active", o === b);
      drawCharts();
    });
  }
  window.addEventListener("resize", () => {
    for (const [id, p] of plots) p.setSize({width: Math.max(260, document.getElementById(id).clientWidth), height: 180});
  });
  // Colours come from the stylesheet: a switch between light and dark redraws the charts.
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    for (const p of plots.values()) p.destroy();
    plots.clear();
    if (last) render(last);
  });

  // actions: every one asks first and shows the host's answer
  function describeResult(r) {
    return [r.ok ? "Done" : "The host reports a failure",
            `${r.action} on ${r.server}: ${r.result}, exit status ${r.exit_status ?? "\u2013"} (audit #${r.audit_id})`,
            r.output || "(no output)"];
  }
  async function runAction(question, action, args) {
    const r = await act(question, "Confirm action", () => api("POST", base + "/actions", {action, arguments: args}), describeResult);
    await Promise.all([refreshProcesses(), refreshAudit(), action === "service" ? refreshServices() : null]);
    return r;
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    if (!b || !canAct || b.disabled) return;
    if (b.dataset.kill) {
      const pid = Number(b.dataset.kill), st = b.dataset.startTime;
      runAction(`Send SIGTERM to process ${pid} (${b.dataset.pname}) on ${NAME}?`, "kill",
                {pid, signal: "TERM", start_time: st === "" || st == null ? null : Number(st)});
    } else if (b.dataset.service) {
      const verb = b.dataset.verb || "restart";
      runAction(`${verb[0].toUpperCase() + verb.slice(1)} ${b.dataset.service} on ${NAME}?`, "service",
                {unit: b.dataset.service, verb});
    } else if (b.dataset.container) {
      const verb = b.dataset.verb || "restart";
      runAction(`${verb[0].toUpperCase() + verb.slice(1)} container ${b.dataset.container} on ${NAME}?`, "docker",
                {container: b.dataset.container, verb});
    } else if (b.dataset.ack) {
      act(`Acknowledge alert ${b.dataset.ack}? Its repeat notifications stop.`, "Acknowledge",
          () => api("POST", `/api/v1/alerts/${b.dataset.ack}/ack`),
          (a) => ["Acknowledged", `${a.rule} on ${a.server} acknowledged by ${a.acked_by}`, ""]).then((r) => r && location.reload());
    } else if (b.dataset.silenceRule !== undefined) {
      location.assign(`/alerts?rule=${encodeURIComponent(b.dataset.silenceRule)}&server=${encodeURIComponent(b.dataset.silenceServer || "")}#silence-form`);
    }
  });

  // processes: the same markup as the template; a Kill only where the host would accept it
  function procRow(p) {
    const tr = el("tr", {"data-pid": p.pid},
      el("td", {class: "num", text: String(p.pid)}), el("td", {class: "pname", text: p.name}),
      el("td", {class: "wide", text: p.user || "\u2013"}),
      el("td", {class: "num", text: fmtPct(p.cpu_percent)}), el("td", {class: "num", text: fmtBytes(p.rss)}),
      el("td", {class: "mono cmd wide", text: p.cmdline || ""}));
    if (canAct) {
      tr.append(el("td", {}, p.kill ? el("button", {type: "button", class: "small danger", "data-kill": p.pid,
        "data-start-time": p.start_time == null ? "" : p.start_time, "data-pname": p.name, text: "Kill"}) : ""));
    }
    return tr;
  }
  const sig = (nodes) => nodes.map((r) => r.textContent).join("\n");
  async function refreshProcesses() {
    try {
      const p = await api("GET", base + "/processes");
      const table = document.getElementById("processes"), body = table.tBodies[0];
      const rows = p.top_cpu.map(procRow);
      if (sig(rows) !== sig(Array.from(body.rows)) || body.querySelectorAll("button[data-kill]").length !== p.top_cpu.filter((x) => x.kill).length) {
        body.replaceChildren(...(rows.length ? rows : [el("tr", {class: "empty"}, el("td", {colspan: 7, text: "No process list yet."}))]));
      }
      table.classList.toggle("stale-list", p.stale);
      document.getElementById("proc-info").textContent = `${p.count ?? "\u2013"} processes` +
        (p.stale && p.ts ? `, the last list it sent (${fmtAgo(p.ts, Date.now() / 1000)})` : "");
    } catch (err) { /* the next refresh tries again */ }
  }

  // services and timers: failed first, then watched, running, the rest; filter by text, state and type
  const svcFilter = document.getElementById("svc-filter"), svcState = document.getElementById("svc-state");
  const ORDER = {restart: 0, stop: 1, start: 2};
  function verbsFor(u) {
    // what makes sense in the unit's state, among what the policy allows
    const running = u.active === "active" || u.active === "reloading" || u.active === "activating";
    const wanted = running ? ["restart", "stop"] : u.active === "failed" ? ["restart"] : ["start"];
    return u.actions.filter((v) => wanted.includes(v)).sort((a, b) => ORDER[a] - ORDER[b]);
  }
  function unitRow(u, live) {
    const badge = u.active === "active" ? "ok" : u.active === "failed" ? "crit" : "";
    const name = el("td", {class: "lead"}, u.unit);
    if (u.watched) name.append(" ", el("span", {class: "tag", text: "watched"}));
    if (u.description) name.append(el("div", {class: "sub", text: u.description}));
    const tr = el("tr", {"data-unit": u.unit, "data-active": u.active || "", "data-sub": u.sub || "",
                         "data-watched": u.watched ? "true" : "false", "data-type": u.type || ""},
      name, el("td", {"data-label": "State"}, el("span", {class: "badge " + badge, text: u.active || "unknown"}), u.sub ? " " : "",
                       u.sub ? el("span", {class: "sub", text: u.sub}) : ""),
      el("td", {"data-label": "Since", class: "wide", text: u.since == null ? "\u2013" : fmtAgo(u.since, Date.now() / 1000)}),
      el("td", {"data-label": "PID", class: "num wide", text: u.main_pid ? String(u.main_pid) : "\u2013"}),
      el("td", {"data-label": "Memory", class: "num wide", text: fmtBytes(u.memory)}),
      el("td", {"data-label": "CPU", class: "num wide", text: fmtPct(u.cpu_percent)}));
    if (canAct) {
      const buttons = (live ? verbsFor(u) : []).map((v) => el("button", {type: "button", class: "small" + (v === "restart" ? "" : " secondary"),
        "data-service": u.unit, "data-verb": v, disabled: stale, text: v[0].toUpperCase() + v.slice(1)}));
      tr.append(el("td", {class: "actions"}, el("div", {class: "buttons-row"}, ...buttons)));
    }
    return tr;
  }
  function filterServices() {
    const text = svcFilter.value.trim().toLowerCase(), state = svcState.value;
    let shown = 0, total = 0;
    for (const tr of document.querySelectorAll("#services tbody tr[data-unit]")) {
      total++;
      const a = tr.dataset.active, watched = tr.dataset.watched === "true";
      // by default what needs a look or can be acted on: watched, failed and running units
      // (a text filter searches them all)
      const main = watched || a === "failed" || tr.dataset.sub === "running";
      const ok = (!text || tr.textContent.toLowerCase().includes(text)) &&
        ((!state && (main || text)) || state === "all" || (state === "running" && a === "active") || (state === "failed" && a === "failed") ||
         (state === "watched" && watched) || (state === "inactive" && a !== "active") ||
         ((state === "service" || state === "timer") && tr.dataset.type === state));
      if (tr.hidden === ok) tr.hidden = !ok;
      if (ok) shown++;
    }
    document.getElementById("svc-shown").textContent = total ? (shown === total ? `${total} units` : `${shown} of ${total} units`) : "";
  }
  async function refreshServices() {
    let doc;
    try {
      doc = await api("GET", base + "/services" + (stale ? "?live=false" : ""));
    } catch (err) {
      document.getElementById("services-info").textContent = "services failed: " + err.message;
      return;
    }
    const body = document.querySelector("#services tbody");
    const rows = doc.units.map((u) => unitRow(u, doc.live));
    body.replaceChildren(...(rows.length ? rows : [el("tr", {class: "empty"}, el("td", {colspan: 7,
      text: doc.available ? "No units." : "No systemd here."}))]));
    document.getElementById("services-card").dataset.live = String(doc.live);
    document.getElementById("services-info").textContent = !doc.available ? "systemd is not available on this host"
      : doc.live ? "" : (doc.error || "failed and watched units of the last poll");
    document.getElementById("svc-filters").hidden = !doc.available;
    filterServices();
  }
  svcFilter.addEventListener("input", filterServices);
  // containers: a text filter over the server-rendered table (the page reload refreshes it)
  const ctFilter = document.getElementById("ct-filter");
  if (ctFilter) {
    ctFilter.addEventListener("input", () => {
      const text = ctFilter.value.trim().toLowerCase();
      for (const tr of document.querySelectorAll("#containers tbody tr[data-container-row]")) {
        tr.hidden = !!text && !tr.textContent.toLowerCase().includes(text);
      }
    });
  }
  svcState.addEventListener("input", filterServices);

  async function refreshAudit() {
    try {
      const a = await api("GET", "/api/v1/audit?limit=50&server=" + encodeURIComponent(NAME));
      const rows = a.audit.map((r) => el("tr", {"data-id": r.id},
        el("td", {"data-label": "When"}, timeEl(r.ts)), el("td", {"data-label": "Who"}, r.actor + " ", el("span", {class: "sub", text: r.role})),
        el("td", {"data-label": "Action", text: r.action}),
        el("td", {"data-label": "Arguments", class: "mono long", text: Object.keys(r.arguments).sort().filter((k) => r.arguments[k] != null).map((k) => `${k}=${r.arguments[k]} `).join("")}),
        el("td", {"data-label": "Result"}, el("span", {class: "badge result-" + r.result, text: r.result})),
        el("td", {"data-label": "Exit", class: "num", text: r.exit_status == null ? "\u2013" : String(r.exit_status)}),
        el("td", {"data-label": "Output", class: "mono output long", text: r.output})));
      const body = document.querySelector("#audit tbody");
      if (rows.length) body.replaceChildren(...rows);
    } catch (err) { /* the next refresh tries again */ }
  }

  function setStale(s) {
    const was = stale;
    stale = s.stale;
    head.dataset.stale = String(stale);
    const note = document.getElementById("stale-note");
    note.hidden = !stale;
    if (stale) {
      note.textContent = (s.last_seen == null ? "Never seen" : `Last seen ${fmtAgo(s.last_seen, Date.now() / 1000)} (${fmtTime(s.last_seen)})`) +
        ": the figures below are the last ones it sent, and actions are off until it answers again.";
    }
    for (const b of document.querySelectorAll("button[data-service], button[data-container]")) b.disabled = stale;
    if (was !== stale) { refreshProcesses(); refreshServices(); }
  }
  async function refreshStatus() {
    try {
      const s = (await api("GET", base)).server;
      const badge = document.querySelector("#status .badge");
      badge.className = "badge status-" + s.status;
      badge.textContent = s.status;
      document.getElementById("status-reason").textContent = s.status_text || s.status_reason || "";
      document.getElementById("last-seen").replaceChildren(timeEl(s.last_seen));
      document.getElementById("last-seen-ago").textContent = fmtAgo(s.last_seen, Date.now() / 1000);
      setStale(s);
    } catch (err) { /* the next refresh tries again */ }
  }

  drawCharts();
  refreshServices();
  filterServices();
  let tick = 0;
  setInterval(() => {
    if (document.hidden) return;
    refreshStatus();
    refreshProcesses();
    if (++tick % 6 === 0 || sparse) drawCharts();  // every 30 s
    if (tick % 6 === 3) refreshServices();
  }, REFRESH_MS);
})();
