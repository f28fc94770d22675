// isvc console · The Playground: a service's own routes on this gateway, as any client calls them.
// Generative services: chat and completions, streamed. Encoder services: embeddings, rerank, classify,
// or KServe V1 :predict (token classification, fill-mask). The modes a service offers come from its task
// (isvc/console/playground.py puts them on each <option> as data-modes).
import { $, esc } from "./core.js";

const MODES = {
  chat: { label: "Chat", input: "Message", hint: "" },
  completions: { label: "Completions", input: "Message", hint: "The prompt is sent as written." },
  embeddings: { label: "Embeddings", input: "Texts (one per line)", hint: "Each line is embedded (/openai/v1/embeddings); two or more lines also show their cosine similarities." },
  rerank: { label: "Rerank", input: "Query", hint: "The documents are ordered by relevance to the query (/openai/v1/rerank)." },
  classify: { label: "Classify", input: "Texts (one per line)", hint: "Each line is classified (/openai/v1/classify): its label and every class's probability." },
  predict: { label: "Predict (KServe V1)", input: "Texts (one per line)", hint: "Each line is an instance of a KServe V1 request (/v1/models/NAME:predict)." },
};

const pg = $("#playground");
if (pg) {
  const turns = [];
  const answer = $("#answer"), stats = $("#stats"), history = $("#history"), service = $("#service"), mode = $("#mode");
  let answered = false;  // #answer holds a chat answer not yet in the transcript

  function clearChat() { turns.length = 0; answered = false; history.innerHTML = ""; answer.textContent = ""; stats.textContent = ""; }

  // The modes of the chosen service's task; the fields of the chosen mode.
  function showModes() {
    const opt = service.selectedOptions[0];
    const modes = opt ? opt.dataset.modes.split(" ") : ["chat", "completions"];
    const chosen = mode.value;
    if ([...mode.options].map((o) => o.value).join(" ") !== modes.join(" ")) {
      mode.innerHTML = modes.map((m) => '<option value="' + m + '">' + esc(MODES[m].label) + "</option>").join("");
      mode.value = modes.includes(chosen) ? chosen : modes[0];
    }
    showFields();
  }
  function showFields() {
    const m = mode.value;
    for (const el of pg.querySelectorAll("[data-for]")) el.hidden = !el.dataset.for.split(" ").includes(m);
    $("#message-label").textContent = MODES[m].input;
    $("#mode-hint").textContent = MODES[m].hint;
  }
  service.addEventListener("change", () => { clearChat(); showModes(); });
  mode.addEventListener("change", () => { clearChat(); showFields(); });
  $("#clear").addEventListener("click", clearChat);
  showModes();

  pg.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const opt = service.selectedOptions[0];
    if (!opt) { stats.textContent = "No service to send to: apply one first."; return; }
    const [ns, name] = opt.value.split("/");
    const headers = { "Content-Type": "application/json" };
    const key = $("#api-key").value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    const base = "/serving/" + encodeURIComponent(ns) + "/" + encodeURIComponent(name);
    $("#send").disabled = true;
    try {
      if (mode.value === "chat" || mode.value === "completions") await generate(base, headers, opt.dataset.model, mode.value === "chat");
      else await encode(base, headers, opt.dataset.model, mode.value);
    } finally {
      $("#send").disabled = false;
    }
  });

  // ---- chat and completions: streamed ----
  async function generate(base, headers, model, chat) {
    const text = $("#message").value;
    const body = { model, stream: true, max_tokens: Number($("#max-tokens").value) || 64,
      temperature: Number($("#temperature").value), stream_options: { include_usage: true } };
    const stop = $("#stop").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (stop.length) body.stop = stop;
    if (chat) {
      const sys = $("#system").value.trim();
      body.messages = (sys ? [{ role: "system", content: sys }] : []).concat(turns, [{ role: "user", content: text }]);
    } else {
      body.prompt = text;
    }
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
    const t0 = performance.now();
    let first = null, chunks = 0, usage = null, revision = "";
    try {
      const r = await fetch(base + "/openai/v1/" + (chat ? "chat/completions" : "completions"), { method: "POST", headers, body: JSON.stringify(body) });
      revision = r.headers.get("x-isvc-revision") || "";
      if (!r.ok || !r.body) { stats.textContent = await failure(r); return; }
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
    }
  }

  // ---- encoders: one request, the answer as a table ----
  const lines = (text) => text.split("\n").map((s) => s.trim()).filter(Boolean);

  async function encode(base, headers, model, m) {
    const texts = lines($("#message").value);
    let path, body;
    if (m === "embeddings") { path = "/openai/v1/embeddings"; body = { model, input: texts, encoding_format: "float" }; }
    else if (m === "classify") { path = "/openai/v1/classify"; body = { model, input: texts }; }
    else if (m === "rerank") { path = "/openai/v1/rerank"; body = { model, query: $("#message").value.trim(), documents: lines($("#documents").value) }; }
    else { path = "/v1/models/" + encodeURIComponent(model) + ":predict"; body = { instances: texts }; }
    answer.textContent = ""; stats.textContent = "sending…";
    const t0 = performance.now();
    try {
      const r = await fetch(base + path, { method: "POST", headers, body: JSON.stringify(body) });
      const revision = r.headers.get("x-isvc-revision") || "?";
      if (!r.ok) { stats.textContent = await failure(r); return; }
      const data = await r.json();
      const ms = Math.round(performance.now() - t0);
      answer.innerHTML = render(m, data, texts, body);
      const tokens = data.usage ? " · " + data.usage.prompt_tokens + " input tokens" : "";
      stats.textContent = ms + " ms" + tokens + " · revision " + revision;
    } catch (e) {
      stats.textContent = "failed: " + e;
    }
  }

  const num = (x, digits = 4) => Number(x).toFixed(digits);
  // a table of already-escaped cells; with rowHeaders, each row's first cell heads it
  const table = (id, caption, head, rows, rowHeaders = false) => '<div class="table-wrap" tabindex="0" role="region" aria-label="' + esc(caption) + '"><table id="' + id + '"><caption>' + esc(caption) + "</caption><thead><tr>" +
    head.map((h) => '<th scope="col">' + esc(h) + "</th>").join("") + "</tr></thead><tbody>" +
    rows.map((row) => "<tr>" + row.map((c, k) => (rowHeaders && k === 0 ? '<th scope="row">' + c + "</th>" : "<td>" + c + "</td>")).join("") + "</tr>").join("") +
    "</tbody></table></div>";

  function render(m, data, texts, body) {
    if (m === "embeddings") {
      const vectors = data.data.map((d) => d.embedding);
      const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
      let html = table("embeddings", "Embeddings", ["#", "Text", "Dimensions", "Norm", "First values"],
        vectors.map((v, i) => [String(i + 1), esc(texts[i]), String(v.length), num(norm(v)), "<code>" + v.slice(0, 6).map((x) => num(x)).join(", ") + ", …</code>"]));
      if (vectors.length > 1) {
        const cos = (a, b) => a.reduce((s, x, k) => s + x * b[k], 0) / (norm(a) * norm(b) || 1);
        html += table("similarity", "Cosine similarity", ["", ...texts.map((_, i) => "#" + (i + 1))],
          vectors.map((a, i) => ["#" + (i + 1), ...vectors.map((b) => num(cos(a, b), 3))]), true);
      }
      return html;
    }
    if (m === "classify") {
      return table("classes", "Classes", ["Text", "Label", "Probability", "All classes"],
        data.data.map((d) => [esc(texts[d.index]), "<strong>" + esc(d.label) + "</strong>", num(Math.max(...d.probs)),
          "<code>" + d.probs.map((p, k) => k + ": " + num(p, 3)).join(" · ") + "</code>"]));
    }
    if (m === "rerank") {
      return table("ranking", "Documents by relevance", ["Rank", "Document", "Relevance"],
        data.results.map((x, k) => [String(k + 1), esc(body.documents[x.index]), num(x.relevance_score)]));
    }
    return table("predictions", "Predictions", ["Text", "Prediction"],
      data.predictions.map((p, i) => [esc(texts[i]), "<code>" + esc(JSON.stringify(p)) + "</code>"]));
  }

  // An error answer in either protocol's body: OpenAI's {"error": {"message"}}, KServe's {"error": "..."}.
  async function failure(r) {
    const text = await r.text();
    let message = text;
    try {
      const e = JSON.parse(text).error;
      message = typeof e === "string" ? e : (e && e.message) || text;
    } catch (e) { /* not JSON: show it as it came */ }
    return "HTTP " + r.status + ": " + message;
  }
}
