"""The web console of ``isvc up``: services, apply, logs, playground and metrics, served by the gateway.

It lives at ``/_isvc/console/`` (and ``/`` redirects there when no service Host matches). Pages are
server-rendered Jinja2 templates, each with a small ES module of our own (``static/js/<view>.js``, on fetch and
EventSource); every asset comes from this package, none from a CDN.

The console changes state (apply, delete), so unless the gateway is bound to loopback it needs the
admin key (``isvc up --admin-key KEY``, else ``<state dir>/admin.key``, made and printed on first start),
sent as ``Authorization: Bearer KEY`` or set as a cookie by the login form. Namespace API keys never
grant it. State-changing calls take JSON only, so another site cannot post a form to them; an open console
answers only a loopback Host (no DNS rebinding), and every POST must come from its own origin (``Origin``,
``Sec-Fetch-Site``). Responses carry a Content-Security-Policy of ``default-src 'self'``: nothing inline.

Contract with the browser tests (keep these exact):

- every page's ``<title>`` starts with "isvc console"; a ``<nav>`` has links named "Services", "Apply",
  "Playground", "Metrics";
- the services table has ``id="services"``, one row per service holding its name and a READY cell whose
  text is ``True``, ``False`` or ``Unknown``; the name links to the service's detail page;
- the apply page has a ``<textarea>`` labelled "Manifest", buttons "Dry run" and "Apply"; field errors
  are shown in an element with ``role="alert"`` that contains the field path (e.g. ``spec.predictor``);
- the playground has a ``<select>`` labelled "Service", a ``<select>`` labelled "Mode" holding the modes of the
  service's task, a ``<textarea>`` labelled "Message" (for encoder modes "Texts (one per line)", or "Query"
  with "Documents (one per line)"), a button "Send", the streamed answer (or the encoder's tables: ``id``
  ``embeddings``, ``similarity``, ``classes``, ``ranking``, ``predictions``) in ``id="answer"``, and the timing
  and revision in ``id="stats"``;
- a service's detail page links each replica's log with a link "Logs"; the log page shows the text in
  ``id="log"`` and follows it live; the detail page has a button "Delete", then "Confirm delete";
- the metrics page (``id="metrics"``) has per service a ``<section>`` whose ``<h2>`` is ``namespace/name`` and
  whose text holds "TTFT p50"; its charts are ``role="img"`` named from "tokens/s", "running requests",
  "waiting requests" and "TTFT p50 and p95" (a ``<polyline>`` each of class ``p50`` and ``p95``), or, with fewer
  than two samples to join, the text "no data yet" instead of the image;
- a locked console's sign-in page has a password field labelled "Admin key" and a button "Sign in"; once
  signed in, every page's header has a button "Sign out".
"""
