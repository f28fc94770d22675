// isvc console: live fragments, apply, delete, logs, playground, metrics. No dependencies.
"use strict";
(function () {
  const prefix = document.body.dataset.prefix;
  const $ = (sel) => document.querySelector(sel);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  async function postJSON(path, body) {
    const r = await fetch(prefix + path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    let data = {};
    try { data = await r.json(); } catch (e) { data = { error: r.status + " " + r.statusText }; }
    return { ok: r.ok, status: r.status, data };
  }

  async function swap(el) {
    try {
      const r = await fetch(el.dataset.fragment, { headers: { Accept: "text/html" } });
      if (r.status === 404) return "gone";
      if (!r.ok) return;
      const html = await r.text();
      if (el.dataset.last !== html) { el.innerHTML = html; el.dataset.last = html; }
    } catch (e) { /* the gateway restarts: try again on the next tick */ }
  }

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

  // Apply: dry run or apply; field errors inline.
  const applyForm = $("#apply-form");
  if (applyForm) {
    const errors = $("#apply-errors"), result = $("#apply-result");
    $("#manifest-file").addEventListener("change", async (ev) => {
      const f = ev.target.files[0];
      if (f) $("#manifest").value = await f.text();
    });
    async function run(dryRun) {
      errors.innerHTML = ""; result.textContent = dryRun ? "Validating…" : "Applying…";
      const r = await postJSON("/api/apply", { manifest: $("#manifest").value, namespace: $("#namespace").value, dry_run: dryRun });
      const warnings = (r.data.warnings || []).join("\n");
      if (r.ok) {
        result.textContent = r.data.lines.join("\n") + (warnings ? "\n" + warnings : "");
        return;
      }
      result.textContent = "";
      const problems = r.data.problems || [];
      errors.innerHTML = problems.length
        ? "<p>The manifest is not valid:</p><ul>" + problems.map((p) => "<li>" + (p.path ? "<code>" + esc(p.path) + "</code>: " : "") + esc(p.message) + (p.doc ? " (document " + (p.doc + 1) + ")" : "") + "</li>").join("") + "</ul>"
        : "<p>" + esc(r.data.error || "failed") + "</p>";
      if (warnings) result.textContent = warnings;
    }
    $("#dry-run").addEventListener("click", () => run(true));
    $("#apply").addEventListener("click", () => run(false));
  }

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
        } catch (e) { /* the gateway is down: retry below */ }
        setTimeout(() => { if (es.readyState === EventSource.CLOSED && $("#follow").checked) { log.textContent = ""; open(); } }, 3000);
      };
    }
    $("#follow").addEventListener("change", (ev) => {
      if (ev.target.checked) { log.textContent = ""; open(); } else { es.close(); state.textContent = "paused"; }
    });
    open();
  }

  // Playground: the gateway's own OpenAI routes, streamed.
  const pg = $("#playground");
  if (pg) {
    const turns = [];
    const answer = $("#answer"), stats = $("#stats"), history = $("#history");
    let answered = false;  // #answer holds a chat answer not yet in the transcript
    $("#clear").addEventListener("click", () => { turns.length = 0; answered = false; history.innerHTML = ""; answer.textContent = ""; stats.textContent = ""; });
    pg.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const opt = $("#service").selectedOptions[0];
      if (!opt) { stats.textContent = "No service to send to: apply one first."; return; }
      const [ns, name] = opt.value.split("/");
      const chat = $("#mode").value === "chat";
      const text = $("#message").value;
      const body = { model: opt.dataset.model, stream: true, max_tokens: Number($("#max-tokens").value) || 64,
        temperature: Number($("#temperature").value), stream_options: { include_usage: true } };
      const stop = $("#stop").value.split(",").map((s) => s.trim()).filter(Boolean);
      if (stop.length) body.stop = stop;
      if (chat) {
        const sys = $("#system").value.trim();
        body.messages = (sys ? [{ role: "system", content: sys }] : []).concat(turns, [{ role: "user", content: text }]);
      } else {
        body.prompt = text;
      }
      const headers = { "Content-Type": "application/json" };
      const key = $("#api-key").value.trim();
      if (key) headers.Authorization = "Bearer " + key;
      // the transcript holds the earlier turns and this question; the answer streams into #answer only
      // (it joins the transcript when the next question is sent, so no text shows twice)
      if (answered) history.insertAdjacentHTML("beforeend", '<p class="turn">' + esc(answer.textContent) + "</p>");
      answered = false;
      let asked = null;
      if (chat) {
        history.insertAdjacentHTML("beforeend", '<p class="turn user">You: ' + esc(text) + "</p>");
        asked = history.lastElementChild;
      }
      answer.textContent = ""; stats.textContent = "sending…";
      $("#send").disabled = true;
      const t0 = performance.now();
      let first = null, chunks = 0, usage = null, revision = "";
      try {
        const r = await fetch("/serving/" + ns + "/" + name + "/openai/v1/" + (chat ? "chat/completions" : "completions"), { method: "POST", headers, body: JSON.stringify(body) });
        revision = r.headers.get("x-isvc-revision") || "";
        if (!r.ok || !r.body) { stats.textContent = "HTTP " + r.status + ": " + (await r.text()); return; }
        const reader = r.body.getReader(), dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
            for (const line of event.split("\n")) {
              if (!line.startsWith("data: ")) continue;
              const data = line.slice(6);
              if (data === "[DONE]") continue;
              const msg = JSON.parse(data);
              if (msg.error) { stats.textContent = "error: " + (msg.error.message || JSON.stringify(msg.error)); continue; }
              if (msg.usage) usage = msg.usage;
              const c = (msg.choices || [])[0];
              const piece = c ? (chat ? (c.delta && c.delta.content) || "" : c.text || "") : "";
              if (piece) { if (first === null) first = performance.now(); chunks += 1; answer.textContent += piece; }
            }
          }
        }
        const t1 = performance.now();
        const tokens = usage ? usage.completion_tokens : chunks;
        const gen = first === null ? 0 : (t1 - first) / 1000;
        stats.textContent = "TTFT " + (first === null ? "–" : Math.round(first - t0) + " ms") + " · " + tokens + " tokens · " +
          (gen > 0 ? (Math.max(tokens - 1, 0) / gen).toFixed(1) : "–") + " tokens/s · revision " + (revision || "?");
        if (chat) {
          turns.push({ role: "user", content: text }, { role: "assistant", content: answer.textContent });
          answered = true;
          asked = null;
        }
      } catch (e) {
        stats.textContent = "failed: " + e;
      } finally {
        if (asked) asked.remove();  // no answer came: the question is not part of the chat
        $("#send").disabled = false;
      }
    });
  }

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
})();
