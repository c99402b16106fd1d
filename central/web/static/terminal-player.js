// Replays a terminal recording (asciicast v2) in xterm.js with its timing: play/pause,
// restart, speed, and long pauses shortened. Only output events are written; resize events
// resize the player; input events are in the file, their echo in the output.
"use strict";
(() => {
  const card = document.getElementById("player-card");
  if (!card) return;
  const box = document.getElementById("player");
  const playButton = document.getElementById("play");
  const speedSelect = document.getElementById("speed");
  const idleSelect = document.getElementById("idle-limit");
  const position = document.getElementById("position");
  const message = document.getElementById("player-message");
  let term = null, events = [], next = 0, clock = 0, timer = null, playing = false, duration = 0;

  const setState = (s) => { box.dataset.state = s; playButton.textContent = s === "playing" ? "Pause" : "Play"; };
  const show = () => { position.textContent = `${clock.toFixed(1)} s / ${duration.toFixed(1)} s`; };

  function parse(text) {
    const lines = text.split("\n").filter((l) => l.trim());
    const header = JSON.parse(lines[0]);
    if (header.version !== 2) throw new Error("not an asciicast v2 recording");
    return {header, events: lines.slice(1).map((l) => JSON.parse(l))};
  }

  function restart() {
    clearTimeout(timer);
    term.reset();
    const [cols, rows] = [card.dataset.cols | 0, card.dataset.rows | 0];
    term.resize(cols, rows);
    next = 0; clock = 0;
    show();
  }

  // The gap before event i, as played: shortened to the idle limit, divided by the speed.
  function gap(i) {
    const prev = i === 0 ? 0 : events[i - 1][0];
    let g = Math.max(0, events[i][0] - prev);
    const limit = Number(idleSelect.value);
    if (limit > 0) g = Math.min(g, limit);
    return g / Number(speedSelect.value);
  }

  function step() {
    if (next >= events.length) { playing = false; setState("done"); return; }
    const [ts, code, data] = events[next];
    if (code === "o") term.write(data);
    else if (code === "r") {
      const m = /^(\d+)x(\d+)$/.exec(data);
      if (m) term.resize(Number(m[1]), Number(m[2]));
    }
    clock = ts;
    next += 1;
    show();
    if (next >= events.length) { playing = false; setState("done"); return; }
    timer = setTimeout(step, gap(next) * 1000);
  }

  function play() {
    if (next >= events.length) restart();
    playing = true;
    setState("playing");
    timer = setTimeout(step, next < events.length ? gap(next) * 1000 : 0);
  }
  function pause() { clearTimeout(timer); playing = false; setState("paused"); }

  playButton.addEventListener("click", () => (playing ? pause() : play()));
  document.getElementById("restart").addEventListener("click", () => { restart(); if (playing) play(); else setState("paused"); });

  fetch(`/api/v1/terminal/sessions/${card.dataset.session}/recording`, {credentials: "same-origin", cache: "no-store"})
    .then((resp) => { if (!resp.ok) throw new Error(`the recording could not be loaded (HTTP ${resp.status})`); return resp.text(); })
    .then((text) => {
      const rec = parse(text);
      events = rec.events;
      duration = events.length ? events[events.length - 1][0] : 0;
      card.dataset.cols = rec.header.width;
      card.dataset.rows = rec.header.height;
      card.dataset.events = events.length;
      term = new Terminal({cols: rec.header.width, rows: rec.header.height, disableStdin: true, scrollback: 5000,
                           fontSize: 14, fontFamily: '"DejaVu Sans Mono", ui-monospace, monospace'});
      term.open(box);
      window.centralPlayer = term;  // for the console (and the browser tests)
      show();
      setState("paused");
    })
    .catch((err) => { message.textContent = err.message; message.className = "error"; setState("error"); });
})();
