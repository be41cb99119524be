// xml-pipeline console: runs with Stop buttons, a live hop log, per-listener counters and the
// organism's graph, from the control plane's JSON API. Plain JavaScript, no build step and no
// external assets: the control plane serves this file from the package.
//
// The token comes from the URL fragment (#token=..., never sent to the server) or the form,
// is kept in sessionStorage (this tab only), and goes with every request as
// `Authorization: Bearer`. The event stream is read with fetch() and a stream reader, because
// EventSource cannot send that header.
"use strict";

(() => {
  const TOKEN_KEY = "xml-pipeline-console-token";
  const POLL_MS = 1500; // runs (their progress and output) and counters between stream events
  const MAX_HOPS = 200; // hop log rows kept
  const FLUSH_MS = 100; // the hop log and the graph's counts are drawn at most this often
  const MAX_RUN_ROWS = 100; // runs shown: every active one first, then the latest finished
  const MAX_RETRY_MS = 10000;
  const ACTIVE = new Set(["queued", "running", "waiting"]);
  const STOPPABLE = new Set(["running", "waiting"]);
  const OK_OUTCOMES = new Set(["", "ok"]); // a hop's outcome: "ok", or the failure's reason code
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    token: "",
    runs: [], // the last list of runs the API gave
    runsReceived: 0, // when (performance.now()): running runs' elapsed time counts on from it
    graph: null,
    edgeCounts: new Map(), // "from → to" -> hops
    nodeCounts: new Map(), // listener -> hops finished
    streamCounts: false, // the stream's counts events set the counts (api/stats' do not then)
    hops: 0,
    stream: null, // AbortController of the event stream
    poller: 0,
    generation: 0, // bumped on every (re)connect: late answers of an older one are ignored
    problem: "", // what the error banner says
    problemKind: "", // "auth", "unreachable", "http", "action", "token": what clears it
  };

  const $ = (id) => document.getElementById(id);

  // ---- the token -----------------------------------------------------------------------

  function tokenFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const token = params.get("token");
    if (token === null) return null;
    // out of the address bar, the history and any screenshot of them
    history.replaceState(null, "", location.pathname + location.search);
    return token;
  }

  function loadToken() {
    const fromFragment = tokenFromFragment();
    if (fromFragment !== null) sessionStorage.setItem(TOKEN_KEY, fromFragment);
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  // ---- the API -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${state.token}` };
    let response;
    try {
      response = await fetch(path, { cache: "no-store", ...options, headers });
    } catch (error) {
      throw new ApiError(0, `${options.method || "GET"} ${path}: ${error.message}`);
    }
    if (!response.ok) {
      let detail = "";
      try {
        const body = await response.json();
        detail = body.error || "";
      } catch (_) {
        // 401's body is small and fixed, and may not be JSON
      }
      throw new ApiError(response.status, detail || `${response.status} ${response.statusText}`);
    }
    if (state.problemKind === "unreachable" || state.problemKind === "http") setProblem("");
    return response.status === 204 ? null : response.json();
  }

  function showProblem(error) {
    let text;
    if (error.status === 401) {
      text =
        "The control API refused the token (401 Unauthorized).\n" +
        "Enter the token the organism was started with (the variable its control: token_env " +
        "names, XP_CONTROL_TOKEN by default), or open this page as …/#token=YOUR_TOKEN.";
      stopAll();
      setConnection("error", "unauthorized");
      setProblem(text, "auth");
      graphWaits(
        "The graph needs the token: the control API refused this one (401). " +
          "Enter the right one above.",
      );
    } else if (error.status === 0) {
      text =
        `Cannot reach the control API at ${location.origin}: ${error.message}.\n` +
        "Is the organism still running? Retrying…";
      setConnection("error", "unreachable");
      setProblem(text, "unreachable");
    } else {
      setProblem(`The control API answered ${error.status}: ${error.message}`, "http");
    }
  }

  // what the graph panel says while there is no graph to draw (not yet loaded, or refused)
  function graphWaits(text) {
    if (state.graph) return;
    $("graph").replaceChildren(el("p", { class: "empty" }, text));
  }

  function setProblem(text, kind = "") {
    state.problem = text;
    state.problemKind = text ? kind : "";
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  function setConnection(kind, text) {
    $("connection").dataset.state = kind;
    $("connection-text").textContent = text;
  }

  // ---- formatting ----------------------------------------------------------------------

  function duration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
    if (seconds < 0.001) return `${Math.round(seconds * 1e6)} µs`;
    if (seconds < 0.01) return `${(seconds * 1000).toFixed(1)} ms`;
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const s = Math.floor(seconds);
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }

  function clock(epochSeconds) {
    const date = epochSeconds ? new Date(epochSeconds * 1000) : new Date();
    return date.toLocaleTimeString([], { hour12: false });
  }

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else if (key in node) node[key] = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // replaceChildren, leaving out the columns not shown (null)
  function replace(parent, ...children) {
    parent.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  }

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    for (const child of children) node.append(child);
    return node;
  }

  // ---- runs ----------------------------------------------------------------------------

  function runId(run) {
    return run.run_id ?? run.id ?? "";
  }

  function lastLine(run) {
    const output = run.output;
    if (Array.isArray(output) && output.length) return String(output[output.length - 1]);
    return run.last_output ?? "";
  }

  function elapsed(run) {
    const base = Number(run.elapsed_seconds ?? 0);
    if (run.status === "running" || run.status === "waiting") {
      return base + (performance.now() - state.runsReceived) / 1000;
    }
    return base;
  }

  function setRuns(runs) {
    state.runs = Array.isArray(runs) ? runs : [];
    state.runsReceived = performance.now();
    renderRuns();
  }

  function sortedRuns() {
    const active = [];
    const finished = [];
    for (const run of state.runs) (ACTIVE.has(run.status) ? active : finished).push(run);
    active.sort((a, b) => (a.started_at ?? Infinity) - (b.started_at ?? Infinity));
    finished.sort((a, b) => (b.finished_at ?? 0) - (a.finished_at ?? 0));
    return [...active, ...finished];
  }

  // Rows are kept while their run is unchanged (elapsed time aside) and the table is touched
  // only when a row changed or moved: a Stop button is never replaced under the pointer.
  let rowCache = new Map(); // run key -> { signature, row }
  const rowRun = new WeakMap(); // row -> the run it shows now (for the elapsed clock)

  function runKey(run) {
    return runId(run) || `queued ${run.listener} ${run.thread ?? ""}`;
  }

  function signature(run) {
    const { elapsed_seconds: _, ...rest } = run;
    return JSON.stringify(rest);
  }

  function renderRuns() {
    const body = $("runs").tBodies[0];
    const next = new Map();
    const rows = [];
    for (const run of sortedRuns().slice(0, MAX_RUN_ROWS)) {
      const key = runKey(run);
      const sig = signature(run);
      let cached = rowCache.get(key);
      if (!cached || cached.signature !== sig) cached = { signature: sig, row: runRow(run) };
      rowRun.set(cached.row, run);
      cached.row.querySelector(".elapsed").textContent = duration(elapsed(run));
      next.set(key, cached);
      rows.push(cached.row);
    }
    rowCache = next;
    const shown = body.children;
    if (rows.length !== shown.length || rows.some((row, i) => row !== shown[i])) {
      body.replaceChildren(...rows);
    }
    $("runs-empty").hidden = rows.length > 0;
    const counts = {};
    for (const run of state.runs) counts[run.status] = (counts[run.status] || 0) + 1;
    const running = (counts.running || 0) + (counts.waiting || 0);
    $("runs-summary").textContent =
      `${running} running` + (counts.queued ? `, ${counts.queued} queued` : "") +
      `, ${state.runs.length - running - (counts.queued || 0)} recent`;
    const busy = new Set(
      state.runs.filter((r) => r.status === "running").map((r) => r.listener),
    );
    document.querySelectorAll("#graph .node").forEach((node) => {
      node.classList.toggle("active", busy.has(node.dataset.listener));
    });
  }

  function runRow(run) {
    const id = runId(run);
    const status = run.status || "unknown";
    const active = ACTIVE.has(status);
    let action = null;
    if (STOPPABLE.has(status) && id) {
      action = el("button", { class: "stop", type: "button", title: `cancel run ${id}` }, "Stop");
      action.addEventListener("click", () => stopRun(id, action));
    }
    // a finished run's reason, when its status does not say it all (failed: handler_error...)
    const reason = !active && run.outcome && !["ok", status].includes(run.outcome) ? run.outcome : "";
    const conversation = run.conversation ?? "";
    return el(
      "tr",
      { class: active ? "active" : "finished", data: { runId: id, status } },
      el("td", { class: "mono clip run-id", title: id }, id || "—"),
      el("td", {}, run.listener ?? ""),
      el("td", { class: "mono clip conversation", title: conversation }, conversation),
      el(
        "td",
        { class: "status-cell", title: run.message ?? "" },
        el("span", { class: `status status-${status}` }, status),
        reason ? el("span", { class: "reason" }, reason) : null,
      ),
      el("td", { class: "num elapsed" }, duration(elapsed(run))),
      el(
        "td",
        { class: "said" },
        el("div", { class: "clip progress", title: run.progress ?? "" }, run.progress ?? ""),
        el("div", { class: "mono clip output", title: lastLine(run) }, lastLine(run)),
      ),
      el("td", {}, action),
    );
  }

  function tickElapsed() {
    for (const row of $("runs").tBodies[0].rows) {
      const run = rowRun.get(row);
      if (run && (run.status === "running" || run.status === "waiting")) {
        row.querySelector(".elapsed").textContent = duration(elapsed(run));
      }
    }
  }

  async function stopRun(id, button) {
    button.disabled = true;
    button.textContent = "Stopping…";
    try {
      await api(`api/runs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
      if (state.problemKind === "action") setProblem("");
    } catch (error) {
      button.disabled = false;
      button.textContent = "Stop";
      if (error.status === 409 || error.status === 404) {
        setProblem(`Run ${id} could not be stopped: ${error.message}`, "action");
      } else {
        showProblem(error);
      }
    }
    await refreshRuns();
  }

  async function refreshRuns() {
    const generation = state.generation;
    try {
      const body = await api("api/runs");
      if (generation === state.generation) setRuns(body.runs);
    } catch (error) {
      if (generation === state.generation) showProblem(error);
    }
  }

  // ---- listener counters ---------------------------------------------------------------

  async function refreshStats() {
    const generation = state.generation;
    let body;
    try {
      body = await api("api/stats");
    } catch (error) {
      if (generation === state.generation) showProblem(error);
      return;
    }
    if (generation !== state.generation) return;
    renderStats(body);
  }

  // Always shown: hops and failures (the event hub's counts since the control plane started)
  // and the runs listed now; the recovery counters only when some listener has any.
  const ALWAYS = ["hops", "failed"];
  const WHEN_USED = ["retries", "recovered", "exhausted", "circuit_rejections", "compensations"];

  function renderStats(body) {
    const listeners = body.listeners || {};
    const names = Object.keys(listeners);
    for (const l of state.graph?.listeners || []) if (!names.includes(l.name)) names.push(l.name);
    const value = (name, key) => (listeners[name] || {})[key];
    const used = WHEN_USED.filter((key) => names.some((n) => value(n, key)));
    const circuits = names.some((n) => value(n, "circuit"));
    const errors = names.some((n) => value(n, "last_error"));
    const running = new Map();
    for (const run of state.runs) {
      if (run.status === "running" || run.status === "waiting") {
        running.set(run.listener, (running.get(run.listener) || 0) + 1);
      }
    }
    const head = $("stats").tHead.rows[0];
    replace(
      head,
      el("th", {}, "Listener"),
      el("th", { class: "num" }, "Running"),
      ...[...ALWAYS, ...used].map((c) => el("th", { class: "num" }, heading(c))),
      circuits ? el("th", {}, "Circuit") : null,
      errors ? el("th", {}, "Last error") : null,
    );
    replace(
      $("stats").tBodies[0],
      ...names.map((name) =>
        el(
          "tr",
          { data: { listener: name } },
          el("td", {}, name),
          el("td", { class: "num" }, String(running.get(name) || 0)),
          ...[...ALWAYS, ...used].map((c) =>
            el("td", { class: c === "failed" && value(name, c) ? "num outcome-bad" : "num" },
              formatCounter(value(name, c) ?? 0)),
          ),
          circuits ? el("td", {}, value(name, "circuit") ?? "") : null,
          errors
            ? el("td", { class: "clip error-text mono", title: value(name, "last_error") ?? "" },
              value(name, "last_error") ?? "")
            : null,
        ),
      ),
    );
    $("stats-empty").hidden = names.length > 0;
    const organism = body.organism || {};
    const parts = [];
    for (const key of ["conversations", "answered", "failed", "hops"]) {
      if (typeof organism[key] === "number") parts.push(`${organism[key]} ${key}`);
    }
    $("stats-summary").textContent = parts.join(" · ");
    if (!state.streamCounts && Array.isArray(body.edges)) {
      // the server's counts since it started (until the stream's counts events take over)
      for (const edge of body.edges) {
        const key = edgeKey(edge.from, edge.to);
        if (state.edgeCounts.has(key) && edge.hops > state.edgeCounts.get(key)) {
          state.edgeCounts.set(key, edge.hops);
          updateGraphCounts(key, null);
        }
      }
      for (const [name, counts] of Object.entries(listeners)) {
        if (counts.hops > (state.nodeCounts.get(name) || 0)) {
          state.nodeCounts.set(name, counts.hops);
          updateGraphCounts(null, name);
        }
      }
    }
  }

  const heading = (key) => key[0].toUpperCase() + key.slice(1).replaceAll("_", " ");

  function formatCounter(value) {
    if (value === undefined || value === null) return "";
    if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(3);
    return String(value);
  }

  // ---- the hop log ---------------------------------------------------------------------

  function caller(hop) {
    return hop.caller ?? hop.sender ?? "";
  }

  // The server's totals, counted where hops finish (the same whether or not anybody watched):
  // the stream sends them first and then when they changed, each after the hops it counts,
  // so the hops that come after it are counted on top of it, none twice.
  function onCounts(counts) {
    state.streamCounts = true;
    for (const edge of counts.edges || []) {
      // every edge, drawn yet or not: the graph may load after the stream's first event
      const key = edgeKey(edge.from, edge.to);
      if (state.edgeCounts.get(key) !== edge.hops) {
        state.edgeCounts.set(key, edge.hops);
        touched.edges.add(key);
      }
    }
    for (const [name, c] of Object.entries(counts.listeners || {})) {
      if (state.nodeCounts.get(name) !== c.hops) {
        state.nodeCounts.set(name, c.hops);
        touched.nodes.add(name);
      }
    }
    if (!flushTimer) flushTimer = setTimeout(flushHops, FLUSH_MS);
  }

  // Hops are counted as they come and drawn at most every FLUSH_MS, the newest MAX_HOPS of
  // them: an organism making thousands of hops a second costs the page a few DOM updates.
  const pending = [];
  const touched = { edges: new Set(), nodes: new Set() };
  let flushTimer = 0;

  function onHop(hop) {
    state.hops += 1;
    const from = caller(hop);
    const to = hop.listener ?? "";
    state.nodeCounts.set(to, (state.nodeCounts.get(to) || 0) + 1);
    const key = edgeKey(from, to);
    if (state.edgeCounts.has(key)) {
      state.edgeCounts.set(key, state.edgeCounts.get(key) + 1);
      touched.edges.add(key);
    }
    touched.nodes.add(to);
    pending.push(hop);
    if (pending.length > MAX_HOPS) pending.shift();
    if (!flushTimer) flushTimer = setTimeout(flushHops, FLUSH_MS);
  }

  function hopRow(hop) {
    const from = caller(hop);
    const failed = !OK_OUTCOMES.has(hop.outcome ?? "");
    const conversation = hop.conversation ?? "";
    return el(
      "tr",
      { data: { listener: hop.listener ?? "", conversation } },
      el("td", { class: "mono muted" }, clock(hop.at)),
      el("td", { class: from.startsWith("_") ? "muted" : "" }, from || "outside"),
      el("td", { class: "arrow" }, "→"),
      el("td", {}, hop.listener ?? ""),
      el("td", { class: "mono clip conversation", title: conversation }, conversation),
      el("td", { class: failed ? "outcome-bad" : "outcome-ok" }, failed ? hop.outcome : "ok"),
      el("td", { class: "num" }, duration(hop.duration_seconds)),
    );
  }

  function flushHops() {
    flushTimer = 0;
    const body = $("hops").tBodies[0];
    const fragment = document.createDocumentFragment();
    for (let i = pending.length - 1; i >= 0; i--) fragment.append(hopRow(pending[i]));
    pending.length = 0;
    body.prepend(fragment);
    while (body.rows.length > MAX_HOPS) body.deleteRow(body.rows.length - 1);
    $("hops-empty").hidden = body.rows.length > 0;
    $("hops-summary").textContent = `${state.hops} since this page opened, newest first`;
    for (const key of touched.edges) updateGraphCounts(key, null);
    for (const name of touched.nodes) updateGraphCounts(null, name);
    touched.edges.clear();
    touched.nodes.clear();
  }

  // ---- the graph -----------------------------------------------------------------------

  const edgeKey = (from, to) => `${from} → ${to}`; // names hold no whitespace

  function updateGraphCounts(key, to) {
    const edge = key && document.querySelector(`#graph .edge[data-key="${CSS.escape(key)}"]`);
    if (edge) {
      edge.classList.add("hot");
      edge.querySelector(".label text").textContent = String(state.edgeCounts.get(key));
      fitLabel(edge);
    }
    const node = to && document.querySelector(`#graph .node[data-listener="${CSS.escape(to)}"]`);
    if (node) node.querySelector(".count").textContent = hopsText(state.nodeCounts.get(to));
  }

  const hopsText = (n) => (n ? `${n} hop${n === 1 ? "" : "s"}` : "");

  function fitLabel(edge) {
    const text = edge.querySelector(".label text");
    const rect = edge.querySelector(".label rect");
    const width = Math.max(18, text.getComputedTextLength() + 10);
    rect.setAttribute("width", width);
    rect.setAttribute("x", Number(text.getAttribute("x")) - width / 2);
  }

  async function loadGraph() {
    const generation = state.generation;
    try {
      const graph = await api("api/graph");
      if (generation !== state.generation) return;
      state.graph = graph;
      if (graph.name) $("organism").textContent = graph.name;
      for (const edge of graph.edges || []) {
        const key = edgeKey(edge.from, edge.to);
        if (!state.edgeCounts.has(key)) state.edgeCounts.set(key, 0);
      }
      drawGraph(graph);
      renderRuns();
    } catch (error) {
      if (generation === state.generation) showProblem(error);
    }
  }

  // Layers by breadth-first distance from the listeners nobody calls (or the first listener,
  // when every one is in a cycle); within a layer, ordered by where their callers are.
  function layout(names, edges) {
    const incoming = new Map(names.map((n) => [n, []]));
    const outgoing = new Map(names.map((n) => [n, []]));
    for (const { from, to } of edges) {
      if (from === to || !incoming.has(to) || !outgoing.has(from)) continue;
      incoming.get(to).push(from);
      outgoing.get(from).push(to);
    }
    const layer = new Map();
    const visit = (roots) => {
      const queue = [];
      for (const root of roots) {
        if (!layer.has(root)) {
          layer.set(root, 0);
          queue.push(root);
        }
      }
      while (queue.length) {
        const name = queue.shift();
        for (const next of outgoing.get(name)) {
          if (!layer.has(next)) {
            layer.set(next, layer.get(name) + 1);
            queue.push(next);
          }
        }
      }
    };
    visit(names.filter((n) => incoming.get(n).length === 0));
    for (const name of names) if (!layer.has(name)) visit([name]);
    const layers = [];
    for (const name of names) {
      const i = layer.get(name);
      (layers[i] ||= []).push(name);
    }
    const position = new Map();
    layers.forEach((column, i) => {
      if (i > 0) {
        const weight = (n) => {
          const callers = incoming.get(n).filter((c) => position.has(c) && layer.get(c) < i);
          if (!callers.length) return Number.MAX_SAFE_INTEGER; // after those with callers
          return callers.reduce((sum, c) => sum + position.get(c), 0) / callers.length;
        };
        column.sort((a, b) => weight(a) - weight(b));
      }
      column.forEach((n, j) => position.set(n, j));
    });
    return { layers, layer };
  }

  function drawGraph(graph) {
    const box = $("graph");
    const listeners = graph.listeners || [];
    if (!listeners.length) {
      box.replaceChildren(el("p", { class: "empty" }, "No listeners."));
      return;
    }
    const info = new Map(listeners.map((l) => [l.name, l]));
    const names = listeners.map((l) => l.name);
    const edges = (graph.edges || []).filter((e) => info.has(e.from) && info.has(e.to));
    const { layers, layer } = layout(names, edges);

    const longest = Math.max(...names.map((n) => n.length));
    const W = Math.max(120, Math.min(240, longest * 8 + 28));
    const H = 58;
    const GAP_X = 78;
    const GAP_Y = 26;
    const PAD = 16;
    const tallest = Math.max(...layers.map((c) => c.length));
    const SIDE = 44; // how far an arrow within one column bulges to the right
    const sideways = edges.some(({ from, to }) => layer.get(to) === layer.get(from));
    const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y + 22; // 22: the backend's line
    const width = PAD * 2 + layers.length * W + (layers.length - 1) * GAP_X + (sideways ? SIDE : 0);
    const at = new Map();
    layers.forEach((column, i) => {
      const columnHeight = column.length * H + (column.length - 1) * GAP_Y;
      const top = PAD + (tallest * H + (tallest - 1) * GAP_Y - columnHeight) / 2;
      column.forEach((name, j) => at.set(name, { x: PAD + i * (W + GAP_X), y: top + j * (H + GAP_Y) }));
    });

    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-label": "the organism's listeners and who may call whom",
    });
    root.append(
      svg(
        "defs",
        {},
        svg(
          "marker",
          { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
          svg("path", { d: "M0,0 L10,5 L0,10 z" }),
        ),
      ),
    );

    const edgeLayer = svg("g", {});
    const nodeLayer = svg("g", {});
    root.append(edgeLayer, nodeLayer);

    for (const { from, to } of edges) {
      const a = at.get(from);
      const b = at.get(to);
      let d;
      let label;
      if (layer.get(to) > layer.get(from)) {
        const x1 = a.x + W;
        const y1 = a.y + H / 2;
        const x2 = b.x;
        const y2 = b.y + H / 2;
        const bend = (x2 - x1) / 2;
        d = `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
        label = { x: (x1 + x2) / 2, y: (y1 + y2) / 2 };
      } else if (layer.get(to) < layer.get(from)) {
        // back: from the caller's left side to the callee's right side, below the arrows forward
        // (so the two arrows of a pair calling each other run side by side)
        const x1 = a.x;
        const y1 = a.y + H * 0.8;
        const x2 = b.x + W;
        const y2 = b.y + H * 0.8;
        const bend = (x1 - x2) / 2;
        d = `M${x1},${y1} C${x1 - bend},${y1} ${x2 + bend},${y2} ${x2},${y2}`;
        label = { x: (x1 + x2) / 2, y: (y1 + y2) / 2 };
      } else {
        // within one column: out to the right and back
        const x1 = a.x + W;
        const y1 = a.y + H / 2;
        const y2 = b.y + H / 2;
        const out = x1 + SIDE;
        d = `M${x1},${y1} C${out},${y1} ${out},${y2} ${x1},${y2}`;
        label = { x: x1 + SIDE * 0.75, y: (y1 + y2) / 2 };
      }
      const key = edgeKey(from, to);
      const count = state.edgeCounts.get(key) || 0;
      const group = svg(
        "g",
        { class: count ? "edge hot" : "edge", "data-key": key, "data-from": from, "data-to": to },
        svg("path", { d, "marker-end": "url(#arrow)" }),
        svg(
          "g",
          { class: "label" },
          svg("rect", { x: label.x - 9, y: label.y - 9, width: 18, height: 17, rx: 8 }),
          textNode(String(count), { x: label.x, y: label.y + 4, "text-anchor": "middle" }),
        ),
      );
      group.append(svg("title", {}, `${from} → ${to}: hops since the control plane started`));
      edgeLayer.append(group);
    }

    for (const name of names) {
      const { x, y } = at.get(name);
      const l = info.get(name);
      const marks = [];
      if (l.cpu_bound) marks.push("cpu_bound");
      if (l.handles_errors) marks.push("handles_errors");
      const classes = ["node"];
      if (l.cpu_bound) classes.push("cpu-bound");
      if (l.handles_errors) classes.push("handles-errors");
      nodeLayer.append(
        svg(
          "g",
          { class: classes.join(" "), "data-listener": name },
          svg("rect", { x, y, width: W, height: H, rx: 8 }),
          textNode(name, { class: "name", x: x + W / 2, y: y + 20, "text-anchor": "middle" }),
          textNode(marks.join(" · "), { class: "marks", x: x + W / 2, y: y + 35, "text-anchor": "middle" }),
          textNode(hopsText(state.nodeCounts.get(name)), {
            class: "count",
            x: x + W / 2,
            y: y + 50,
            "text-anchor": "middle",
          }),
        ),
      );
    }
    if (graph.backend) {
      root.append(textNode(`backend: ${graph.backend}`, { class: "backend", x: PAD, y: height - 8 }));
    }
    box.replaceChildren(root);
    root.querySelectorAll(".edge").forEach(fitLabel);
    $("graph-summary").textContent =
      `${names.length} listener${names.length === 1 ? "" : "s"}, ${edges.length} arrow${edges.length === 1 ? "" : "s"}`;
  }

  function textNode(text, attrs) {
    const node = svg("text", attrs);
    node.textContent = text;
    return node;
  }

  // ---- the event stream ----------------------------------------------------------------

  // One server-sent event from its lines (`event:`, `data:`; `:` starts a comment).
  function parseEvent(block) {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    return data.length ? { type, data: data.join("\n") } : null;
  }

  function dispatch(event) {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    if (event.type === "hop") onHop(data);
    else if (event.type === "counts") onCounts(data);
    else if (event.type === "runs") setRuns(Array.isArray(data) ? data : data.runs);
  }

  async function readStream(controller) {
    const response = await fetch("api/events", {
      headers: { Accept: "text/event-stream", Authorization: `Bearer ${state.token}` },
      cache: "no-store",
      signal: controller.signal,
    });
    if (!response.ok) throw new ApiError(response.status, `${response.status} ${response.statusText}`);
    setConnection("live", "live");
    if (state.problemKind !== "action") setProblem("");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) dispatch(event);
      }
    }
  }

  async function followEvents(generation) {
    let wait = 1000;
    while (generation === state.generation) {
      const controller = new AbortController();
      state.stream = controller;
      try {
        await readStream(controller);
        wait = 1000; // it ended cleanly (the server stopped): reconnect soon
      } catch (error) {
        if (controller.signal.aborted || generation !== state.generation) return;
        const problem = error instanceof ApiError ? error : new ApiError(0, `GET api/events: ${error.message}`);
        showProblem(problem);
        if (problem.status === 401) return;
      }
      if (generation !== state.generation) return;
      setConnection("retrying", `reconnecting in ${Math.round(wait / 1000)} s`);
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, MAX_RETRY_MS);
      refreshRuns();
      if (!state.graph) loadGraph();
    }
  }

  // ---- starting and stopping -----------------------------------------------------------

  function stopAll() {
    state.generation += 1;
    if (state.stream) state.stream.abort();
    state.stream = null;
    clearInterval(state.poller);
    state.poller = 0;
  }

  function connect() {
    stopAll();
    if (!state.token) {
      setConnection("idle", "no token");
      graphWaits("The graph needs the token: enter it above.");
      setProblem(
        "No token: open this page as …/#token=YOUR_TOKEN, or enter the token above " +
          "(the value of the variable the organism's control: token_env names).",
        "token",
      );
      return;
    }
    setProblem("");
    setConnection("retrying", "connecting…");
    graphWaits("Loading the graph…");
    const generation = state.generation;
    loadGraph();
    refreshRuns();
    refreshStats();
    followEvents(generation);
    state.poller = setInterval(() => {
      if (generation !== state.generation) return;
      refreshRuns();
      refreshStats();
    }, POLL_MS);
  }

  function start() {
    state.token = loadToken();
    $("token-input").value = state.token;
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.token = $("token-input").value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      connect();
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = "";
      $("token-input").value = "";
      connect();
    });
    window.addEventListener("hashchange", () => {
      const token = tokenFromFragment();
      if (token !== null) {
        sessionStorage.setItem(TOKEN_KEY, token);
        state.token = token;
        $("token-input").value = token;
        connect();
      }
    });
    setInterval(tickElapsed, 1000);
    connect();
  }

  start();
})();
