// isvc console · The Services list and a service's page: live tables, delete with a confirmation.
import { $, esc, postJSON, prefix, swap } from "./core.js";

// Services: an SSE stream says when the list changed; the table is re-rendered by the server.
const servicesLive = $("#services-live");
if (servicesLive) {
  const filter = $("#ns-filter");
  function applyFilter() {
    const namespaces = [...new Set([...servicesLive.querySelectorAll("tr[data-ns]")].map((tr) => tr.dataset.ns))].sort();
    const chosen = filter.value;
    filter.innerHTML = '<option value="">All namespaces</option>' + namespaces.map((ns) => "<option>" + esc(ns) + "</option>").join("");
    filter.value = namespaces.includes(chosen) ? chosen : "";
    for (const tr of servicesLive.querySelectorAll("tr[data-ns]")) tr.hidden = Boolean(filter.value) && tr.dataset.ns !== filter.value;
  }
  filter.addEventListener("change", applyFilter);
  const es = new EventSource(prefix + "/api/stream");
  es.addEventListener("services", async () => { await swap(servicesLive); applyFilter(); });
}
// A service's details: polled (events, pids and restarts change without a list change).
const serviceLive = $("#service-live");
if (serviceLive) {
  // deleted while the page is open (here or elsewhere): say so instead of showing the last READY forever
  const timer = setInterval(async () => {
    if (await swap(serviceLive) !== "gone") return;
    clearInterval(timer);
    const ready = $("#ready");
    if (ready) { ready.textContent = "Deleted"; ready.className = "ready ready-deleted"; }
    $("#delete-result").textContent = "This service was deleted.";
    const del = $("#delete");
    if (del) del.disabled = true;
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
