// isvc console · The Metrics page: polled; small inline SVG charts.
import { $, esc } from "./core.js";

// Metrics: polled; small inline SVG charts.
const metrics = $("#metrics");
if (metrics) {
  function spark(points, key, label) {
    const w = 300, h = 80, vals = points.map((p) => p[key]);
    const max = Math.max(1, ...vals);
    const t0 = points.length ? points[0].t : 0, span = Math.max(1, (points.length ? points[points.length - 1].t : 1) - t0);
    const pts = points.map((p) => ((p.t - t0) / span * w).toFixed(1) + "," + (h - 4 - p[key] / max * (h - 8)).toFixed(1)).join(" ");
    return '<figure class="chart"><figcaption>' + esc(label) + " (max " + max.toFixed(1) + ')</figcaption><svg viewBox="0 0 ' + w + " " + h +
      '" preserveAspectRatio="none" role="img" aria-label="' + esc(label) + '"><polyline points="' + pts + '"/></svg></figure>';
  }
  const ms = (s) => (s === null || s === undefined ? "–" : Math.round(s * 1000) + " ms");
  async function tick() {
    try {
      const r = await fetch(metrics.dataset.src);
      const data = await r.json();
      const names = Object.keys(data).sort();
      metrics.innerHTML = names.length ? names.map((n) => {
        const m = data[n];
        return "<section><h2>" + esc(n) + "</h2><p>" + m.tokens_per_s.toFixed(1) + " tokens/s · running " + m.running + " · waiting " + m.waiting +
          " · TTFT p50 " + ms(m.ttft_p50_s) + " · p95 " + ms(m.ttft_p95_s) + " (over " + m.window_s + " s)</p><div class=\"charts\">" +
          spark(m.points, "tokens_per_s", "tokens/s") + spark(m.points, "running", "running requests") + spark(m.points, "waiting", "waiting requests") + "</div></section>";
      }).join("") : "<p>No ready predictors.</p>";
    } catch (e) { /* next tick */ }
  }
  tick(); setInterval(tick, 2000);
}
