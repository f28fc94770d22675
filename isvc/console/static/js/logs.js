// isvc console · The Logs page: a replica's tail, then new lines as they come.
import { $, signInAgain } from "./core.js";

// Logs: the tail, then new lines as they come.
const log = $("#log");
if (log) {
  let es = null;
  const state = $("#log-state");
  function open() {
    es = new EventSource(log.dataset.src);
    state.textContent = "following";
    es.onmessage = (ev) => {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent += JSON.parse(ev.data) + "\n";
      if (atEnd) log.scrollTop = log.scrollHeight;
    };
    es.onerror = async () => {
      // EventSource retries a dropped stream by itself (sending Last-Event-ID, so no line comes twice);
      // a 404 closes it for good: the replica is gone
      state.textContent = "reconnecting…";
      if (es.readyState !== EventSource.CLOSED) return;
      try {
        const r = await fetch(log.dataset.src + "?follow=0&tail=0");
        if (r.status === 404) { state.textContent = "this replica is gone (deleted, or never ran)"; return; }
        if (r.status === 401) { signInAgain(); return; }
      } catch (e) { /* the gateway is down: retry below */ }
      setTimeout(() => { if (es.readyState === EventSource.CLOSED && $("#follow").checked) { log.textContent = ""; open(); } }, 3000);
    };
  }
  $("#follow").addEventListener("change", (ev) => {
    if (ev.target.checked) { log.textContent = ""; open(); } else { es.close(); state.textContent = "paused"; }
  });
  open();
}
