// isvc console · The Metrics page. The gateway samples every ready predictor's /metrics every 2 s and keeps
// 5 minutes (isvc/console/metrics.py); this page polls that history and draws it as small SVG charts.
import { $, esc, signInAgain } from "./core.js";

const metrics = $("#metrics");
const W = 300, H = 80, PAD = 4;

const num = (v) => (v === null || v === undefined ? "–" : v >= 100 ? v.toFixed(0) : String(+v.toFixed(1)));
const ms = (s) => (s === null || s === undefined ? "–" : Math.round(s * 1000) + " ms");
const span = (s) => (s < 90 ? Math.round(s) + " s" : (s / 60).toFixed(1) + " min");
const present = (v) => v !== null && v !== undefined;

/** A figure charting `series` ({name, value(point), cls}) over the points' time, or "no data yet" while no series
 * has two values to join: a single sample, or one with nothing in it, is not a line. */
function chart(points, series, label) {
  const values = series.map((s) => points.map((p) => s.value(p)));
  const all = values.flat().filter(present);
  const drawable = values.some((vs) => vs.filter(present).length >= 2);
  const latest = (i) => num([...values[i]].reverse().find(present));
  const last = series.length === 1 ? latest(0) : series.map((s, i) => s.name + " " + latest(i)).join(", ");
  const caption = "<figcaption>" + esc(label) + (all.length ? " · now " + esc(last) : "") + "</figcaption>";
  if (!drawable) return '<figure class="chart">' + caption + '<p class="nodata">no data yet</p></figure>';
  const max = Math.max(1, ...all);
  const t0 = points[0].t, width = Math.max(1e-9, points[points.length - 1].t - t0);
  const x = (p) => ((p.t - t0) / width * W).toFixed(1), y = (v) => (H - PAD - v / max * (H - 2 * PAD)).toFixed(1);
  const lines = series.map((s, i) => {
    // a missing value (a replica not answering, no first token in the window) breaks the line, not draws a 0
    const runs = [[]];
    points.forEach((p, j) => { const v = values[i][j]; if (present(v)) runs[runs.length - 1].push(x(p) + "," + y(v)); else runs.push([]); });
    return runs.filter((r) => r.length >= 2).map((r) => '<polyline class="' + s.cls + '" points="' + r.join(" ") + '"/>').join("");
  }).join("");
  return '<figure class="chart">' + caption + '<svg viewBox="0 0 ' + W + " " + H + '" preserveAspectRatio="none" role="img" aria-label="' +
    esc(label + ": now " + last + ", max " + num(max)) + '">' + lines + "</svg><small>max " + esc(num(max)) + "</small></figure>";
}

function ttftScope(m) {
  if (m.ttft_scope === "window") return "over the last " + span(Math.max(m.window_s, m.interval_s));
  if (m.ttft_scope === "since_start") return m.replicas > 1 ? "since the predictors started" : "since the predictor started";
  return "no first token timed yet";
}

function section(name, m) {
  const replicas = m.replicas + (m.replicas === 1 ? " replica" : " replicas");
  const summary = num(m.tokens_per_s) + " tokens/s · running " + m.running + " · waiting " + m.waiting + " · " + replicas +
    " · TTFT p50 " + ms(m.ttft_p50_s) + " · p95 " + ms(m.ttft_p95_s) + " (" + ttftScope(m) + ")";
  const pts = m.points;
  return "<section><h2>" + esc(name) + "</h2><p>" + esc(summary) + '</p><p class="hint">The last ' + esc(span(m.window_s)) +
    ", a point every " + esc(num(m.interval_s)) + ' s.</p><div class="charts">' +
    chart(pts, [{ name: "tokens/s", value: (p) => p.tokens_per_s, cls: "" }], "tokens/s") +
    chart(pts, [{ name: "running", value: (p) => p.running, cls: "" }], "running requests") +
    chart(pts, [{ name: "waiting", value: (p) => p.waiting, cls: "" }], "waiting requests") +
    chart(pts, [
      { name: "p50", value: (p) => (present(p.ttft_p50_s) ? p.ttft_p50_s * 1000 : null), cls: "p50" },
      { name: "p95", value: (p) => (present(p.ttft_p95_s) ? p.ttft_p95_s * 1000 : null), cls: "p95" },
    ], "TTFT p50 and p95, ms (each over the last " + span(m.ttft_window_s) + ")") +
    "</div></section>";
}

if (metrics) {
  async function tick() {
    try {
      const r = await fetch(metrics.dataset.src);
      if (r.status === 401) { signInAgain(); return; }
      if (!r.ok) return;
      const data = await r.json();
      const names = Object.keys(data).sort();
      metrics.innerHTML = names.length ? names.map((n) => section(n, data[n])).join("")
        : "<p>No predictor is ready yet: its metrics appear here once one is.</p>";
    } catch (e) { /* the gateway restarts: next tick */ }
  }
  tick(); setInterval(tick, 2000);
}
