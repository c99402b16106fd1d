// One container: uPlot charts from GET /api/v1/servers/NAME/containers/CONTAINER per range,
// and its Docker actions (confirmed first, the host's answer shown).
"use strict";

(() => {
  const {api, fmtNum, fmtBytes, fmtTime, fmtDate, fmtClock, act, canAct} = central;
  const head = document.getElementById("container");
  const SERVER = head.dataset.server, NAME = head.dataset.name;
  const base = "/api/v1/servers/" + encodeURIComponent(SERVER);
  const url = base + "/containers/" + encodeURIComponent(NAME);
  const rate = (v) => fmtBytes(v) + "/s";
  const CHARTS = [
    {id: "chart-cpu", metrics: ["cpu"], labels: ["CPU"], fmt: (v) => v.toFixed(1) + "%"},
    {id: "chart-mem", metrics: ["mem_used"], labels: ["used"], fmt: fmtBytes},
    {id: "chart-net", metrics: ["net_rx", "net_tx"], labels: ["received", "sent"], fmt: rate},
    {id: "chart-diskio", metrics: ["disk_read", "disk_write"], labels: ["read", "written"], fmt: rate},
    {id: "chart-pids", metrics: ["pids"], labels: ["processes"], fmt: (v) => fmtNum(v, 0)},
  ];
  const plots = new Map();
  let range = "1h";
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const xTicks = (u, splits, axisIdx, space, incr) => splits.map((v) => {
    const d = new Date(v * 1000);
    return incr >= 86400 ? fmtDate(d).slice(5) : fmtClock(d, incr < 60);
  });

  function opts(c, width) {
    const text = cssVar("--muted"), grid = cssVar("--chart-grid");
    const colors = [cssVar("--chart-1"), cssVar("--chart-2")];
    return {
      width, height: 180, title: document.getElementById(c.id).dataset.title,
      scales: {x: {time: true}, y: {range: (u, min, max) => [0, Math.max(max, 1) * 1.1]}},
      axes: [{stroke: text, grid: {stroke: grid}, ticks: {stroke: grid}, values: xTicks},
             {stroke: text, grid: {stroke: grid}, ticks: {stroke: grid}, size: 64, values: (u, vals) => vals.map((v) => c.fmt(v))}],
      series: [{label: "time", value: (u, v) => v == null ? "\u2013" : fmtTime(v)},
               ...c.metrics.map((m, i) => ({label: c.labels[i], stroke: colors[i], width: 1.5,
                                           value: (u, v) => v == null ? "\u2013" : c.fmt(v)}))],
      cursor: {sync: {key: "container-" + NAME}},
    };
  }

  async function draw() {
    let h;
    try {
      h = await api("GET", `${url}?range=${range}&points=300`);
    } catch (err) {
      document.getElementById("history-source").textContent = "history failed: " + err.message;
      return;
    }
    document.getElementById("history-source").textContent = `${h.series.ts.length} points, ${h.source} data, step ${h.step}s`;
    for (const c of CHARTS) {
      const node = document.getElementById(c.id);
      const data = [h.series.ts, ...c.metrics.map((m) => h.series[m])];
      node.dataset.points = String(data.slice(1).reduce((n, s) => n + s.filter((v) => v != null).length, 0));
      let p = plots.get(c.id);
      if (p) p.setData(data);
      else { p = new uPlot(opts(c, Math.max(260, node.clientWidth)), data, node); plots.set(c.id, p); }
      p.setScale("x", {min: h.start, max: h.end});
    }
  }
  for (const b of document.querySelectorAll("#ranges button")) {
    b.addEventListener("click", () => {
      range = b.dataset.range;
      for (const o of document.querySelectorAll("#ranges button")) o.classList.toggle("active", o === b);
      draw();
    });
  }
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-container]");
    if (!b || !canAct || b.disabled) return;
    const verb = b.dataset.verb;
    act(`${verb[0].toUpperCase() + verb.slice(1)} container ${NAME} on ${SERVER}?`, "Confirm action",
        () => api("POST", base + "/actions", {action: "docker", arguments: {container: NAME, verb}}),
        (r) => [r.ok ? "Done" : "The host reports a failure",
                `${r.action} on ${r.server}: ${r.result}, exit status ${r.exit_status ?? "\u2013"} (audit #${r.audit_id})`,
                r.output || "(no output)"]);
  });
  draw();
  setInterval(() => { if (!document.hidden) draw(); }, 30000);
})();
