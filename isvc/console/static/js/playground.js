// isvc console · The Playground: the gateway's own OpenAI routes, streamed.
import { $, esc } from "./core.js";

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
