// The server's terminal: ask for a ticket (password again unless the login is fresh), open the
// WebSocket with it, and connect xterm.js to it. Output arrives as binary frames, control
// messages as JSON text frames (central/web/api_terminal.py).
"use strict";
(() => {
  const card = document.getElementById("terminal-card");
  const form = document.getElementById("term-open");
  if (!card || !form) return;
  const server = card.dataset.server;
  const box = document.getElementById("terminal");
  const state = document.getElementById("term-state");
  const message = document.getElementById("term-message");
  const endButton = document.getElementById("term-end");
  const encoder = new TextEncoder();
  // Text from the central shown inside the terminal: no control characters, so it cannot
  // restyle the terminal (a host's error text may be in it).
  const inert = (text) => String(text || "").replace(/[\u0000-\u001f\u007f-\u009f]/g, "");
  let term = null, fit = null, ws = null, ended = false;

  function setState(text, cls) {
    state.textContent = text;
    state.className = "badge " + (cls || "");
    card.dataset.state = text;
  }
  function say(text, isError) {
    message.textContent = text;
    message.className = isError ? "error" : "sub";
  }

  function makeTerminal() {
    if (term) { term.reset(); return; }
    box.hidden = false;
    document.getElementById("term-help").hidden = false;
    term = new Terminal({cursorBlink: true, scrollback: 5000, fontSize: 14,
                         fontFamily: '"DejaVu Sans Mono", ui-monospace, monospace'});
    fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    term.attachCustomKeyEventHandler((ev) => {
      if (ev.type !== "keydown" || !ev.ctrlKey || !ev.shiftKey) return true;
      if (ev.code === "KeyC") { copy(); ev.preventDefault(); return false; }
      if (ev.code === "KeyV") {
        // With the async clipboard (https, localhost) paste from it; elsewhere the browser's
        // own paste event reaches xterm.js, which pastes.
        if (navigator.clipboard && navigator.clipboard.readText) {
          ev.preventDefault();
          navigator.clipboard.readText().then((text) => term.paste(text)).catch(() => {});
        }
        return false;
      }
      return true;
    });
    term.onData((data) => send(encoder.encode(data)));
    term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
    term.onResize(({cols, rows}) => {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({type: "resize", cols, rows}));
    });
    window.addEventListener("resize", () => fit.fit());
    window.centralTerminal = term;  // for the console (and the browser tests)
  }

  function copy() {
    if (!term.hasSelection()) return;
    const text = term.getSelection();
    if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(text).catch(() => {});
    else document.execCommand("copy");  // xterm.js fills the copy event with its selection
  }

  function send(bytes) {
    if (ws && ws.readyState === WebSocket.OPEN && !ended) ws.send(bytes);
  }

  function control(msg) {
    if (msg.type === "started") {
      setState("connected", "ok");
      card.dataset.session = msg.session;
      endButton.hidden = false;
      form.hidden = true;
      say(`Session ${msg.session} as ${msg.account} on ${msg.server}, recorded. It ends at ${central.fmtTime(msg.ends_at)} at the latest.`);
      term.focus();
      if (window.centralRefreshLive) window.centralRefreshLive();
    } else if (msg.type === "ended") {
      ended = true;
      term.write(`\r\n\x1b[1;33m[central] ${inert(msg.message || msg.reason)}\x1b[0m\r\n`);
      finish(`Session ${msg.session} ended: ${msg.message || msg.reason}.`, msg.session);
    } else if (msg.type === "error") {
      term.write(`\r\n\x1b[1;31m[central] ${inert(msg.detail)}\x1b[0m\r\n`);
      if (!card.dataset.session) { ended = true; finish(msg.detail, null, true); }
      else say(msg.detail, true);
    }
  }

  function finish(text, session, isError) {
    setState("closed", isError ? "crit" : "");
    endButton.hidden = true;
    form.hidden = false;
    say(text, isError);
    if (session) {
      message.append(" ", central.el("a", {href: `/terminal/sessions/${session}`, id: "term-recording"}, "Replay the recording"));
    }
    delete card.dataset.session;
    if (window.centralRefreshLive) window.centralRefreshLive();
  }

  function connect(ticket) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${proto}//${location.host}/api/v1/terminal/ws?ticket=${encodeURIComponent(ticket)}` +
                `&cols=${term.cols}&rows=${term.rows}`;
    ended = false;
    ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    setState("connecting", "warn");
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") {
        try { control(JSON.parse(ev.data)); } catch (e) { say("bad message from the central", true); }
      } else {
        term.write(new Uint8Array(ev.data));
      }
    };
    ws.onclose = () => {
      if (!ended) { ended = true; finish("The connection to the central closed.", card.dataset.session, true); }
      ws = null;
    };
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const password = form.elements.password.value;
    const body = password ? {password} : {};
    say("Checking…");
    try {
      const answer = await central.api("POST", `/api/v1/servers/${encodeURIComponent(server)}/terminal`, body);
      form.elements.password.value = "";
      makeTerminal();
      connect(answer.ticket);
    } catch (err) {
      const code = err.data && err.data.error;
      if (code === "fresh_auth_required") form.elements.password.focus();
      say(err.message, true);
      card.dataset.refused = code || "error";
    }
  });

  endButton.addEventListener("click", () => {
    if (!ws) return;
    const current = ws;  // not a later session's socket
    current.send(JSON.stringify({type: "end"}));
    setTimeout(() => { if (current.readyState !== WebSocket.CLOSED) current.close(); }, 3000);
  });
})();
