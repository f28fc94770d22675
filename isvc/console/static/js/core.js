// isvc console: what every view's script shares. No dependencies; each view imports what it needs.
export const prefix = document.body.dataset.prefix;
export const $ = (sel) => document.querySelector(sel);
export const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

export async function postJSON(path, body) {
  const r = await fetch(prefix + path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  let data = {};
  try { data = await r.json(); } catch (e) { data = { error: r.status + " " + r.statusText }; }
  return { ok: r.ok, status: r.status, data };
}

/** Re-render `el` from its server fragment (`data-fragment`); "gone" when the thing it shows is 404. */
export async function swap(el) {
  try {
    const r = await fetch(el.dataset.fragment, { headers: { Accept: "text/html" } });
    if (r.status === 404) return "gone";
    if (!r.ok) return;
    const html = await r.text();
    if (el.dataset.last !== html) { el.innerHTML = html; el.dataset.last = html; }
  } catch (e) { /* the gateway restarts: try again on the next tick */ }
}
