// isvc console · The Apply page: dry run or apply; field errors inline.
import { $, esc, postJSON } from "./core.js";

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
