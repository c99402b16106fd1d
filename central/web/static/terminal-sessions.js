// The End buttons of open terminal sessions (one's own; anyone's for an admin).
"use strict";
document.addEventListener("click", async (ev) => {
  const button = ev.target.closest("[data-end-session]");
  if (!button) return;
  const id = button.dataset.endSession;
  if (!await central.ask(`End terminal session ${id}?`, "The shell on the host is closed; the recording stays.", "End session")) return;
  try {
    await central.api("POST", `/api/v1/terminal/sessions/${id}/end`);
    location.reload();
  } catch (err) {
    await central.show("Could not end the session", err.message);
  }
});
