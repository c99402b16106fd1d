// Shared by every page: API calls with the session's CSRF token, formatting, the modal.
"use strict";

const central = (() => {
  const csrfToken = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // fetch() a JSON endpoint; throws an Error carrying the API's {"error", "detail"}.
  async function api(method, url, body) {
    const opts = {method, headers: {"Accept": "application/json"}, credentials: "same-origin", cache: "no-store"};
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrfToken();
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(url, opts);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (resp.status === 401 && method === "GET") {
      location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    }
    if (!resp.ok) {
      const err = new Error((data && data.detail) || resp.status + " " + resp.statusText);
      err.status = resp.status;
      err.data = data;
      throw err;
    }
    return data;
  }

  // Where a login may send the browser: the rule of safe_redirect() in central/web/security.py
  // (a single leading "/", no control character or backslash, no scheme or host), else "/".
  function safeNext(target) {
    if (typeof target !== "string" || !target.startsWith("/") || target.startsWith("//")) return "/";
    if (/[\x00-\x1f\x7f\\]/.test(target) || target.length > 500) return "/";
    let url;
    try { url = new URL(target, location.origin); } catch (e) { return "/"; }
    return url.origin === location.origin ? target : "/";
  }

  // Host text as the page shows it, like shown() in central/web/pages.py: the characters
  // central/hosttext.py escape() makes visible (controls but line breaks, bidi controls,
  // zero-width ones) as \xNN / \uNNNN, and at most `limit` characters.
  const UNSAFE = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff]/g;
  const SHOWN_LIMIT = 1000;
  function shown(v, limit = SHOWN_LIMIT) {
    let s = String(v);
    if (s.length > limit) s = s.slice(0, limit - 1) + "\u2026";
    return s.replace(UNSAFE, (ch) => {
      const c = ch.charCodeAt(0);
      return c < 0x100 ? "\\x" + c.toString(16).padStart(2, "0") : "\\u" + c.toString(16).padStart(4, "0");
    });
  }

  // Numbers from a host may be anything ("NaN%", a list): all but finite numbers show as a dash.
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const dash = "\u2013";
  const fmtPct = (v) => !isNum(v) ? dash : v.toFixed(1) + "%";
  const fmtNum = (v, digits = 2) => !isNum(v) ? dash : v.toFixed(digits);
  function fmtBytes(v) {
    if (!isNum(v)) return dash;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? v.toFixed(0) + " B" : v.toFixed(1) + " " + units[i];
  }
  // The one way times are written: 24 h, ISO-like dates, in the browser's time zone (the
  // footer names it once). The server renders <time data-ts> in UTC; localTimes() rewrites them.
  function fmtAgo(ts, now) {
    if (!isNum(ts)) return "never";
    const s = Math.max(0, Math.floor(now - ts));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }
  const pad = (n) => String(n).padStart(2, "0");
  const fmtDate = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const fmtClock = (d, seconds = true) => `${pad(d.getHours())}:${pad(d.getMinutes())}` + (seconds ? `:${pad(d.getSeconds())}` : "");
  function fmtTime(ts) {
    if (!isNum(ts) || Math.abs(ts) > 8.64e12) return dash;
    const d = new Date(ts * 1000);
    return `${fmtDate(d)} ${fmtClock(d)}`;
  }
  function timeZone() {
    const offset = -new Date().getTimezoneOffset(), sign = offset < 0 ? "-" : "+", a = Math.abs(offset);
    const utc = `UTC${sign}${pad(Math.floor(a / 60))}:${pad(a % 60)}`;
    let name = "";
    try { name = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { name = ""; }
    return name && name !== "UTC" ? `${name} (${utc})` : utc;
  }
  function timeEl(ts) {
    if (!isNum(ts) || Math.abs(ts) > 8.64e12) return document.createTextNode(dash);
    const node = document.createElement("time");
    node.dataset.ts = String(ts);
    node.dateTime = new Date(ts * 1000).toISOString();
    node.textContent = fmtTime(ts);
    return node;
  }
  function localTimes(root) {
    for (const node of (root || document).querySelectorAll("time[data-ts]")) {
      const text = fmtTime(Number(node.dataset.ts));
      if (node.textContent !== text) node.textContent = text;
    }
  }
  localTimes();
  const tzNode = document.getElementById("time-zone");
  if (tzNode) tzNode.textContent = "times in " + timeZone();
  const level = (v, warn = 75, crit = 90) => !isNum(v) ? "" : v >= crit ? "crit" : v >= warn ? "warn" : "ok";

  // el("td", {class: "num"}, "text", child) - builds DOM without innerHTML (no markup injection);
  // text goes through shown(), so whatever a host sent is inert.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = shown(v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) node.append(typeof c === "string" ? shown(c) : c);
    return node;
  }

  // The one modal: ask() resolves true/false, show() resolves when closed.
  const modal = document.getElementById("modal");
  let settle = null;
  function open(title, text, output, okLabel, cancel) {
    document.getElementById("modal-title").textContent = shown(title);
    document.getElementById("modal-body").textContent = shown(text || "", Infinity);
    const pre = document.getElementById("modal-output");
    pre.textContent = shown(output || "", Infinity);
    pre.hidden = !output;
    document.getElementById("modal-ok").textContent = okLabel;
    document.getElementById("modal-cancel").hidden = !cancel;
    return new Promise((resolve) => {
      settle = resolve;
      modal.showModal();
      document.getElementById(cancel ? "modal-cancel" : "modal-ok").focus();
    });
  }
  function close(answer) {
    if (modal.open) modal.close();
    if (settle) { const s = settle; settle = null; s(answer); }
  }
  if (modal) {
    document.getElementById("modal-ok").addEventListener("click", () => close(true));
    document.getElementById("modal-cancel").addEventListener("click", () => close(false));
    modal.addEventListener("cancel", (ev) => { ev.preventDefault(); close(false); });
  }
  const ask = (title, text, okLabel = "Confirm") => open(title, text, "", okLabel, true);
  const show = (title, text, output) => open(title, text, output, "Close", false);

  // Ask, call, and show the outcome (the host's exit status and output for actions).
  async function act(question, title, call, describe) {
    if (!(await ask(title, question))) return null;
    try {
      const result = await call();
      const [heading, text, output] = describe(result);
      await show(heading, text, output);
      return result;
    } catch (err) {
      await show("Failed", err.message + (err.status ? ` (HTTP ${err.status})` : ""), "");
      return null;
    }
  }

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try { await api("POST", "/api/v1/logout"); } finally { location.assign("/login"); }
    });
  }

  const canAct = document.body.dataset.role === "admin" || document.body.dataset.role === "operator";
  return {api, safeNext, shown, fmtPct, fmtNum, fmtBytes, fmtAgo, fmtTime, fmtDate, fmtClock, timeEl, localTimes, level,
          el, ask, show, act, canAct, role: document.body.dataset.role};
})();
