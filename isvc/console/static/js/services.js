// isvc console · The Services list and a service's page: live tables, delete with a confirmation.
import { $, postJSON, prefix, signInAgain, swap } from "./core.js";

// The tables update in place (core.js `morph`), so a focused link stays focused; what changed is said once in a
// short status line (role=status), not by re-reading the whole table to a screen reader.
const status = $("#live-status");
function announce(lines) { if (lines.length) status.textContent = lines.join(" "); }
function readyText(name, ready, reason) {
  return ready === "True" ? `${name} is now READY.` : `${name} is not READY (${ready}${reason ? ": " + reason : ""}).`;
}

// Services: an SSE stream says when the list changed; the table is updated from the server's fragment.
const servicesLive = $("#services-live");
if (servicesLive) {
  const filter = $("#ns-filter");
  const states = () => new Map([...servicesLive.querySelectorAll("tr[data-service]")].map((tr) => {
    const cell = tr.querySelector("[data-ready]");
    return [tr.dataset.service, { ready: cell.dataset.ready, reason: (cell.title || "").split(":")[0] }];
  }));
  function applyFilter() {
    const namespaces = [...new Set([...servicesLive.querySelectorAll("tr[data-ns]")].map((tr) => tr.dataset.ns))].sort();
    const offered = [...filter.options].slice(1).map((o) => o.value);
    if (offered.join("\n") !== namespaces.join("\n")) {  // rebuilt only when the set changes: an open select stays open
      const chosen = filter.value;
      filter.replaceChildren(new Option("All namespaces", ""), ...namespaces.map((ns) => new Option(ns, ns)));
      filter.value = namespaces.includes(chosen) ? chosen : "";
    }
    for (const tr of servicesLive.querySelectorAll("tr[data-ns]")) {
      const hide = Boolean(filter.value) && tr.dataset.ns !== filter.value;
      if (tr.hidden !== hide) tr.hidden = hide;
    }
  }
  filter.addEventListener("change", applyFilter);
  let before = states();
  const listen = () => {
    const es = new EventSource(prefix + "/api/stream");
    es.addEventListener("services", changed);
    es.onerror = async () => {
      // EventSource retries a dropped stream by itself; an error answer (a 401 once the sign-in ran out) closes it
      if (es.readyState !== EventSource.CLOSED) return;
      try {
        if ((await fetch(prefix + "/api/services")).status === 401) { signInAgain(); return; }
      } catch (e) { /* the gateway is down: retry below */ }
      setTimeout(listen, 3000);
    };
  };
  listen();
  let busy = false, again = false;
  async function changed() {  // one update at a time: a change during it runs one more, so none is lost or said twice
    if (busy) { again = true; return; }
    busy = true;
    try { do { again = false; await refresh(); } while (again); } finally { busy = false; }
  }
  async function refresh() {
    if (!await swap(servicesLive)) return;
    applyFilter();
    const after = states(), said = [];
    for (const [key, now] of after) {
      const was = before.get(key), name = key.split("/")[1];
      if (!was) said.push(`${name} was added.`);
      if (!was || was.ready !== now.ready) said.push(readyText(name, now.ready, now.reason));
    }
    for (const key of before.keys()) if (!after.has(key)) said.push(`${key.split("/")[1]} was deleted.`);
    before = after;
    announce(said);
  }
}
// A service's details: polled (events, pids and restarts change without a list change).
const serviceLive = $("#service-live");
if (serviceLive) {
  const name = serviceLive.dataset.name;
  const ready = () => { const dd = $("#ready"); return dd ? [dd.textContent.trim(), dd.dataset.reason || ""] : ["", ""]; };
  let before = ready();
  // deleted while the page is open (here or elsewhere): say so instead of showing the last READY forever
  const timer = setInterval(async () => {
    const changed = await swap(serviceLive);
    if (changed === "gone") {
      clearInterval(timer);
      const dd = $("#ready");
      if (dd) { dd.textContent = "Deleted"; dd.className = "ready ready-deleted"; }
      $("#delete-result").textContent = "This service was deleted.";
      const del = $("#delete");
      if (del) del.disabled = true;
      return;
    }
    const now = ready();
    if (changed && now[0] !== before[0]) announce([readyText(name, ...now)]);
    before = now;
  }, 1500);
}
// Delete with a confirmation.
const del = $("#delete");
if (del) {
  const box = $("#confirm-delete");
  del.addEventListener("click", () => { box.hidden = false; $("#confirm").focus(); });
  $("#cancel").addEventListener("click", () => { box.hidden = true; del.focus(); });
  $("#confirm").addEventListener("click", async () => {
    const r = await postJSON("/api/delete", { kind: del.dataset.kind, namespace: del.dataset.namespace, name: del.dataset.name });
    box.hidden = true;
    $("#delete-result").textContent = r.ok ? r.data.deleted + " deleted." : "Delete failed: " + r.data.error;
    if (r.ok) setTimeout(() => { location.href = prefix + "/"; }, 800);
  });
}
