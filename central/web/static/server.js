// One server: uPlot charts from the history endpoint, live process list, actions with confirmation.
"use strict";

(() => {
  const {api, fmtPct, fmtBytes, fmtTime, el, act} = central;
  const NAME = document.getElementById("server").dataset.name;
  const base = "/api/v1/servers/" + encodeURIComponent(NAME);
  const canAct = central.role === "admin" || central.role === "operator";
  const REFRESH_MS = 5000;

  // charts
  const COLORS = ["#2563eb", "#d97706", "#059669", "#db2777"];
  const CHARTS = [
    {id: "chart-cpu", metrics: ["cpu"], labels: ["CPU"], pct: true},
    {id: "chart-mem", metrics: ["mem", "swap"], labels: ["memory", "swap"], pct: true},
    {id: "chart-disk", metrics: ["disk"], labels: ["disk"], pct: true},
    {id: "chart-net", metrics: ["net_rx", "net_tx"], labels: ["received", "sent"], pct: false},
  ];
  const plots = new Map();
  let range = "1h";
  let sparse = true;  // a new server: redraw on every refresh until there is a line to draw

  function chartOpts(c, width) {
    return {
      width, height: 180, title: document.getElementById(c.id).dataset.title,
      scales: {x: {time: true}, y: c.pct ? {range: [0, 100]} : {auto: true}},
      axes: [{}, {size: c.pct ? 50 : 80, values: (u, vals) => vals.map((v) => c.pct ? v + "%" : fmtBytes(v) + "/s")}],
      series: [{}, ...c.metrics.map((m, i) => ({
        label: c.labels[i], stroke: COLORS[i], width: 1.5, fill: i === 0 ? COLORS[i] + "22" : undefined,
        value: (u, v) => v == null ? "\u2013" : c.pct ? v.toFixed(1) + "%" : fmtBytes(v) + "/s",
      }))],
      legend: {live: true},
    };
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
    document.getElementById("history-source").textContent = `${h.series.ts.length} points, ${h.source} data, step ${h.step}s`;
    sparse = h.series.ts.length < 2;
    for (const c of CHARTS) {
      const node = document.getElementById(c.id);
      const data = [h.series.ts, ...c.metrics.map((m) => h.series[m])];
      node.dataset.points = String(data.slice(1).reduce((n, s) => n + s.filter((v) => v != null).length, 0));
      let plot = plots.get(c.id);
      if (plot) {
        plot.setData(data);
      } else {
        plot = new uPlot(chartOpts(c, Math.max(280, node.clientWidth)), data, node);
        plots.set(c.id, plot);
      }
      plot.setScale("x", {min: h.start, max: h.end});
    }
  }

  for (const b of document.querySelectorAll("#ranges button")) {
    b.addEventListener("click", () => {
      range = b.dataset.range;
      for (const o of document.querySelectorAll("#ranges button")) o.classList.toggle("active", o === b);
      drawCharts();
    });
  }
  window.addEventListener("resize", () => {
    for (const [id, plot] of plots) plot.setSize({width: Math.max(280, document.getElementById(id).clientWidth), height: 180});
  });

  // actions: every one asks first and shows the host's answer
  function describeResult(r) {
    return [r.ok ? "Done" : "The host reports a failure",
            `${r.action} on ${r.server}: ${r.result}, exit status ${r.exit_status ?? "\u2013"} (audit #${r.audit_id})`,
            r.output || "(no output)"];
  }
  async function runAction(question, action, args) {
    const r = await act(question, "Confirm action", () => api("POST", base + "/actions", {action, arguments: args}), describeResult);
    await Promise.all([refreshProcesses(), refreshAudit()]);
    return r;
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    if (!b || !canAct) return;
    if (b.dataset.kill) {
      const pid = Number(b.dataset.kill), st = b.dataset.startTime;
      runAction(`Send SIGTERM to process ${pid} (${b.dataset.pname}) on ${NAME}?`, "kill",
                {pid, signal: "TERM", start_time: st === "" || st == null ? null : Number(st)});
    } else if (b.dataset.service) {
      runAction(`Restart ${b.dataset.service} on ${NAME}?`, "service", {unit: b.dataset.service, verb: "restart"});
    } else if (b.dataset.container) {
      runAction(`Restart container ${b.dataset.container} on ${NAME}?`, "docker", {container: b.dataset.container, verb: "restart"});
    } else if (b.dataset.ack) {
      act(`Acknowledge alert ${b.dataset.ack}? Its repeat notifications stop.`, "Acknowledge",
          () => api("POST", `/api/v1/alerts/${b.dataset.ack}/ack`),
          (a) => ["Acknowledged", `${a.rule} on ${a.server} acknowledged by ${a.acked_by}`, ""]).then((r) => r && location.reload());
    } else if (b.dataset.silenceRule !== undefined) {
      location.assign("/alerts");
    }
  });

  // live parts: status, process list, audit
  function procRow(p) {
    const tr = el("tr", {"data-pid": p.pid},
      el("td", {class: "num", text: String(p.pid)}), el("td", {text: p.name}), el("td", {text: p.user || "\u2013"}),
      el("td", {class: "num", text: fmtPct(p.cpu_percent)}), el("td", {class: "num", text: fmtBytes(p.rss)}),
      el("td", {class: "mono cmd", text: p.cmdline || ""}));
    if (canAct) {
      tr.append(el("td", {}, el("button", {type: "button", class: "small danger", "data-kill": p.pid,
        "data-start-time": p.start_time == null ? "" : p.start_time, "data-pname": p.name, text: "Kill"})));
    }
    return tr;
  }
  async function refreshProcesses() {
    try {
      const p = await api("GET", base + "/processes");
      const body = document.querySelector("#processes tbody");
      const rows = p.top_cpu.map(procRow);
      const sig = (nodes) => nodes.map((r) => r.textContent).join("\n");
      if (sig(rows) !== sig(Array.from(body.rows))) {
        body.replaceChildren(...(rows.length ? rows : [el("tr", {class: "empty"}, el("td", {colspan: 7, text: "No process list yet."}))]));
      }
      document.getElementById("proc-info").textContent = `${p.count ?? "\u2013"} processes`;
    } catch (err) { /* the next refresh tries again */ }
  }
  async function refreshAudit() {
    try {
      const a = await api("GET", "/api/v1/audit?limit=50&server=" + encodeURIComponent(NAME));
      const rows = a.audit.map((r) => el("tr", {"data-id": r.id},
        el("td", {text: fmtTime(r.ts)}), el("td", {}, r.actor + " ", el("span", {class: "sub", text: r.role})),
        el("td", {text: r.action}),
        el("td", {class: "mono", text: Object.keys(r.arguments).sort().filter((k) => r.arguments[k] != null).map((k) => `${k}=${r.arguments[k]} `).join("")}),
        el("td", {}, el("span", {class: "badge result-" + r.result, text: r.result})),
        el("td", {class: "num", text: r.exit_status == null ? "\u2013" : String(r.exit_status)}),
        el("td", {class: "mono output", text: r.output})));
      const body = document.querySelector("#audit tbody");
      if (rows.length) body.replaceChildren(...rows);
    } catch (err) { /* the next refresh tries again */ }
  }
  async function refreshStatus() {
    try {
      const s = (await api("GET", base)).server;
      const badge = document.querySelector("#status .badge");
      badge.className = "badge status-" + s.status;
      badge.textContent = s.status;
      document.getElementById("status-reason").textContent = s.status_reason || "";
      document.getElementById("last-seen").textContent = fmtTime(s.last_seen);
    } catch (err) { /* the next refresh tries again */ }
  }

  drawCharts();
  let tick = 0;
  setInterval(() => {
    if (document.hidden) return;
    refreshStatus();
    refreshProcesses();
    if (++tick % 6 === 0 || sparse) drawCharts();  // every 30 s
  }, REFRESH_MS);
})();
