// Log in with JSON (so a wrong password shows as a message, not a JSON page), then go on.
"use strict";

document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target, error = document.getElementById("login-error");
  error.hidden = true;
  try {
    await central.api("POST", "/api/v1/login", {username: form.username.value, password: form.password.value});
    location.assign(central.safeNext(form.next.value));
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
});
