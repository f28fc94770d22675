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

/** A live view got a 401: the sign-in cookie ran out (after 12 h) or another tab signed out. Go to the sign-in
 * page rather than stop updating without a word. */
export function signInAgain() { location.assign(prefix + "/login"); }

/** Update `el` from its server fragment (`data-fragment`) in place (see `morph`); "gone" when the thing it shows
 * is 404, true when something changed. */
export async function swap(el) {
  try {
    const r = await fetch(el.dataset.fragment, { headers: { Accept: "text/html" } });
    if (r.status === 404) return "gone";
    if (r.status === 401) { signInAgain(); return false; }
    if (!r.ok) return false;
    const html = await r.text();
    if (el.dataset.last === html) return false;
    const fresh = document.createElement("template");
    fresh.innerHTML = html;
    morph(el, fresh.content);
    el.dataset.last = html;
    return true;
  } catch (e) { return false; /* the gateway restarts: try again on the next tick */ }
}

/** Make `el`'s children look like `next`'s, keeping every element that is still there: only changed text and
 * attributes are written, so focus (a link a keyboard user is on), selection and scroll positions survive a live
 * update. Children with a `data-key` (or an id) are matched by it, the others by kind in order. */
export function morph(el, next) {
  const wanted = new Set([...next.children].map(key).filter(Boolean));
  const keyed = new Map([...el.children].filter(key).map((c) => [key(c), c]));
  let cur = el.firstChild;
  const drop = () => { const gone = cur; cur = cur.nextSibling; gone.remove(); };
  for (const want of [...next.childNodes]) {
    while (cur && key(cur) && !wanted.has(key(cur))) drop();  // a row that is gone: removed, not moved past
    const k = key(want);
    let have = null;
    if (k) have = keyed.get(k) || null;
    else for (let n = cur; n && !key(n); n = n.nextSibling) if (same(n, want)) { have = n; break; }
    if (have && same(have, want)) {
      if (k && have !== cur) el.insertBefore(have, cur);  // a keyed row that moved (a reorder)
      else while (cur !== have) drop();  // unkeyed nodes the new content skips
      if (have === cur) cur = cur.nextSibling;
      update(have, want);
    } else {
      el.insertBefore(want, cur);  // new: `want` moves over from the fragment
    }
  }
  while (cur) drop();
}

function key(n) { return n.nodeType === 1 ? n.dataset.key || n.id || "" : ""; }

function same(a, b) {
  return a.nodeType === b.nodeType && a.nodeName === b.nodeName && key(a) === key(b);
}

function update(have, want) {
  if (have.nodeType !== 1) {
    if (have.nodeValue !== want.nodeValue) have.nodeValue = want.nodeValue;
    return;
  }
  for (const { name } of [...have.attributes]) if (!want.hasAttribute(name) && !KEEP.has(name)) have.removeAttribute(name);
  for (const { name, value } of want.attributes) if (have.getAttribute(name) !== value) have.setAttribute(name, value);
  morph(have, want);
}

/** Attributes the page's scripts set, which the server's fragment never has. */
const KEEP = new Set(["hidden"]);
