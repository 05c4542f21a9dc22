// The live dashboard: one WebSocket, one JSON frame a second, re-rendered
// section by section. Operator controls call the HTTP API with the key.
"use strict";

(() => {
  const { esc, compact } = Charts;
  const $ = (sel) => document.querySelector(sel);
  const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#f778ba", "#39c5cf"];
  const state = {
    // Kept for this tab only: never in localStorage, where any script that
    // ever runs on this origin could read it later.
    key: sessionStorage.getItem("valueverse.apiKey") || "",
    open: new Map(),        // details id -> open?
    handled: new Map(),     // node/kind/key -> [messages_handled, at_ms]
    rates: new Map(),       // node/kind/key -> messages/s
    selectedSim: null,
    frame: null,
    socket: null,
    retry: 500,
  };
  $("#api-key").value = state.key;

  // ---- connection ------------------------------------------------------
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = state.key ? `?access_token=${encodeURIComponent(state.key)}` : "";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/dashboard${query}`);
    state.socket = socket;
    let got = false;
    socket.onopen = () => setConnection("up", "live");
    socket.onmessage = (event) => {
      got = true;
      state.retry = 500;
      try {
        render(JSON.parse(event.data));
      } catch (error) {
        console.warn("dashboard: cannot render a frame", error);
      }
    };
    socket.onclose = async () => {
      if (state.socket !== socket) return;
      setConnection("down", "reconnecting");
      if (!got) await explainRefusal();
      setTimeout(connect, state.retry);
      state.retry = Math.min(state.retry * 2, 5000);
    };
  }

  async function explainRefusal() {
    try {
      const response = await fetch("/api/v1/dashboard/node", { headers: authHeaders() });
      if (response.status === 401 || response.status === 403) {
        const body = await response.json();
        notice(`The dashboard needs an API key with the viewer role: ${body.error.message}`, false);
      }
    } catch (_) { /* the node is down: the status dot says so */ }
  }

  function setConnection(cls, text) {
    $("#connection").className = `dot ${cls}`;
    $("#connection-text").textContent = text;
  }

  function authHeaders(json) {
    const headers = {};
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    if (json) headers["Content-Type"] = "application/json";
    return headers;
  }

  function notice(text, ok) {
    const el = $("#notice");
    el.textContent = text;
    el.className = ok ? "notice ok" : "notice";
    el.hidden = false;
    clearTimeout(notice.timer);
    notice.timer = setTimeout(() => { el.hidden = true; }, 6000);
  }

  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem("valueverse.apiKey", state.key);
    const old = state.socket;
    state.socket = null;
    if (old) old.close();
    connect();
  });

  // ---- operator controls -----------------------------------------------
  const ACTIONS = {
    reset: (d) => ["POST", `/api/v1/actors/${enc(d.kind)}/${enc(d.key)}/reset?node=${enc(d.node)}`, { reason: "dashboard" }],
    crash: (d) => ["POST", `/api/v1/actors/${enc(d.kind)}/${enc(d.key)}/crash?node=${enc(d.node)}`, { reason: "injected from the dashboard" }],
    "saga-cancel": (d) => ["POST", `/api/v1/sagas/${enc(d.id)}/cancel`, null],
    "saga-retry": (d) => ["POST", `/api/v1/sagas/${enc(d.id)}/retry`, null],
    "sim-cancel": (d) => ["PUT", `/api/v1/simulations/${enc(d.id)}/cancel${d.node ? `?node=${enc(d.node)}` : ""}`, null],
  };
  const enc = encodeURIComponent;

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const data = button.dataset;
    if (data.action === "sim-show") {
      state.selectedSim = data.id;
      if (state.frame) renderSimulations(state.frame);
      return;
    }
    const [method, url, body] = ACTIONS[data.action](data);
    button.disabled = true;
    try {
      const response = await fetch(url, {
        method,
        headers: authHeaders(body !== null),
        body: body === null ? undefined : JSON.stringify(body),
      });
      const text = await response.text();
      if (response.ok) {
        notice(`${data.action}: done`, true);
      } else {
        let message = text;
        try { message = JSON.parse(text).error.message; } catch (_) { /* not JSON */ }
        notice(`${data.action} refused (${response.status}): ${message}`, false);
      }
    } catch (error) {
      notice(`${data.action} failed: ${error}`, false);
    } finally {
      button.disabled = false;
    }
  });

  document.addEventListener("toggle", (event) => {
    const id = event.target.dataset && event.target.dataset.id;
    if (id) state.open.set(id, event.target.open);
  }, true);

  const isOpen = (id, byDefault) => (state.open.has(id) ? state.open.get(id) : byDefault);
  const chip = (status) => `<span class="chip st-${esc(status)}">${esc(String(status).replace("_", " "))}</span>`;
  const ago = (ms) => {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  };
  const time = (ms) => new Date(ms).toLocaleTimeString();
  const shortId = (id) => (id.length > 14 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id);
  const body = (id) => $(`#${id} .body`);
  // Writes only what changed: a control under the pointer stays put
  // while frames arrive, and an idle page does almost no layout.
  const written = new WeakMap();
  // The Content-Security-Policy allows no inline style: widths travel as
  // data-width and are set through the CSSOM, which it allows.
  const put = (el, html) => {
    if (written.get(el) !== html) {
      el.innerHTML = html;
      written.set(el, html);
      el.querySelectorAll("[data-width]").forEach((node) => { node.style.width = node.dataset.width; });
    }
  };

  // ---- rendering -------------------------------------------------------
  function render(frame) {
    state.frame = frame;
    $("#frame-info").textContent = `frame ${time(frame.at_ms)} from ${frame.node} · ${frame.viewers} viewer${frame.viewers === 1 ? "" : "s"}`;
    trackRates(frame);
    renderCluster(frame);
    renderCharts(frame);
    renderSupervision(frame);
    renderSagas(frame);
    renderSimulations(frame);
    renderNotifications(frame);
    renderAudit(frame);
  }

  function trackRates(frame) {
    for (const panel of frame.nodes) {
      for (const kind of panel.kinds || []) {
        for (const instance of kind.instances) {
          const id = `${panel.node}/${kind.kind}/${instance.key}`;
          const last = state.handled.get(id);
          if (last && panel.at_ms > last[1]) {
            state.rates.set(id, (instance.messages_handled - last[0]) * 1000 / (panel.at_ms - last[1]));
          }
          state.handled.set(id, [instance.messages_handled, panel.at_ms]);
        }
      }
    }
  }

  function renderCluster(frame) {
    const rows = frame.cluster.members.map((m) => `<tr>
      <td><span class="dot ${esc(m.state)}"></span> ${esc(m.node)}${m.is_self ? ' <span class="muted">(this node)</span>' : ""}</td>
      <td>${esc(m.state)}</td><td>${esc(m.http_addr)}</td><td>${esc(m.transport_addr || "-")}</td>
      <td>${m.phi == null ? "-" : m.phi.toFixed(1)}</td><td>${m.gpus}</td><td>${m.load.toFixed(2)}</td><td>${(m.owns_share * 100).toFixed(0)}%</td>
      <td>${m.lease_token}</td><td>${(m.lease_expires_in_ms / 1000).toFixed(1)} s</td></tr>`).join("");
    put(body("cluster"), `<table><thead><tr><th>node</th><th>state</th><th>HTTP</th><th>transport</th>
      <th>phi</th><th>GPUs</th><th>load</th><th>owns</th><th>lease token</th><th>lease left</th></tr></thead><tbody>${rows}</tbody></table>
      <div class="muted">${frame.cluster.clustered ? "cluster" : "a cluster of one (serve)"} · ${frame.cluster.rebalances} rebalances seen by ${esc(frame.node)}</div>`);
  }

  function renderCharts(frame) {
    const messages = [], restarts = [];
    frame.nodes.forEach((panel, index) => {
      const color = COLORS[index % COLORS.length];
      const h = panel.history || [];
      const rate = [], restart = [];
      for (let i = 1; i < h.length; i++) {
        const dt = (h[i].at_ms - h[i - 1].at_ms) / 1000;
        if (dt <= 0) continue;
        rate.push([h[i].at_ms, (h[i].messages - h[i - 1].messages) / dt]);
        restart.push([h[i].at_ms, h[i].restarts - h[i - 1].restarts]);
      }
      messages.push({ name: panel.node, color, points: rate });
      restarts.push({ name: panel.node, color, points: restart });
    });
    put($("#chart-messages"), Charts.lines(messages));
    put($("#chart-restarts"), Charts.lines(restarts));
    put($("#chart-legend"), frame.nodes.map((p, i) => `<span><i class="c${i % COLORS.length}"></i>${esc(p.node)}</span>`).join(""));
  }

  function renderSupervision(frame) {
    put(body("supervision"), frame.nodes.map((panel) => {
      if (panel.error) {
        return `<details data-id="node:${esc(panel.node)}"><summary><span class="dot down"></span> ${esc(panel.node)} <span class="counts">unreachable: ${esc(panel.error)}</span></summary></details>`;
      }
      const failed = panel.kinds.reduce((n, k) => n + k.num_failed, 0);
      const restarting = panel.kinds.reduce((n, k) => n + k.num_restarting, 0);
      const kinds = panel.kinds.map((kind) => renderKind(panel.node, kind)).join("");
      const id = `node:${panel.node}`;
      return `<details data-id="${esc(id)}" data-node="${esc(panel.node)}" ${isOpen(id, true) ? "open" : ""}>
        <summary><span class="dot ${failed ? "down" : restarting ? "suspect" : "alive"}"></span> <b>${esc(panel.node)}</b>
        <span class="counts">${panel.kinds.length} supervisors · ${failed} failed · ${restarting} restarting</span></summary>${kinds}</details>`;
    }).join("") || '<div class="empty">no nodes</div>');
  }

  function renderKind(node, kind) {
    const id = `kind:${node}:${kind.kind}`;
    const rows = kind.instances.map((i) => {
      const iid = `${node}/${kind.kind}/${i.key}`;
      const fill = i.mailbox_capacity ? i.mailbox_depth / i.mailbox_capacity : 0;
      const rate = state.rates.get(iid);
      const failure = i.last_failure ? `${esc(i.last_failure.message)} <span class="muted">${ago(Date.parse(i.last_failure.at))}</span>` : "";
      const data = `data-node="${esc(node)}" data-kind="${esc(kind.kind)}" data-key="${esc(i.key)}"`;
      const control = i.status === "failed"
        ? `<button data-action="reset" ${data}>reset</button>`
        : i.status === "active" ? `<button class="danger" data-action="crash" ${data} title="fault injection: the supervisor restarts it">inject fault</button>` : "";
      return `<tr data-instance="${esc(iid)}" data-status="${esc(i.status)}" data-restarts="${i.restarts}">
        <td>${chip(i.status)}</td><td title="${esc(i.key)}">${esc(shortId(i.key))}</td>
        <td class="restarts">${i.restarts}</td>
        <td><span class="bar ${fill >= 0.9 ? "full" : fill >= 0.5 ? "hot" : ""}" title="${i.mailbox_depth} / ${i.mailbox_capacity}"><span data-width="${(fill * 100).toFixed(1)}%"></span></span> ${i.mailbox_depth}</td>
        <td>${rate === undefined ? "-" : compact(rate)}</td><td>${i.messages_handled}</td>
        <td class="wrap">${failure}</td><td>${control}</td></tr>`;
    }).join("");
    const more = kind.instances_total > kind.instances.length ? `<div class="muted">${kind.instances_total - kind.instances.length} more instances not shown</div>` : "";
    const table = kind.instances.length
      ? `<table><thead><tr><th>status</th><th>key</th><th>restarts</th><th>mailbox</th><th>msg/s</th><th>handled</th><th>last failure</th><th></th></tr></thead><tbody>${rows}</tbody></table>${more}`
      : '<div class="empty">no live instances</div>';
    return `<details data-id="${esc(id)}" data-kind="${esc(kind.kind)}" ${isOpen(id, kind.num_failed + kind.num_restarting > 0 || kind.instances.length > 0) ? "open" : ""}>
      <summary>${chip(kind.num_failed ? "failed" : kind.num_restarting ? "restarting" : kind.num_active ? "active" : "idle")} <b>${esc(kind.kind)}</b>
      <span class="counts">${kind.num_active} active · ${kind.num_restarting} restarting · ${kind.num_failed} failed · ${kind.restarts_total} restarts · ${compact(kind.messages_per_second)} msg/s</span></summary>${table}</details>`;
  }

  function timeline(saga) {
    return `<div class="timeline">${saga.steps.map((s, i) => {
      const current = saga.in_flight && saga.in_flight[0] === i;
      const took = s.started_at && s.finished_at ? ` · ${Date.parse(s.finished_at) - Date.parse(s.started_at)} ms` : "";
      const status = current ? (saga.in_flight[1] === "compensate" ? "compensating" : "running") : s.status;
      return `<span class="step st-${esc(status)}" title="${esc(s.name)}: ${esc(status)} · ${s.attempts} attempts${took}${s.last_error ? " · " + esc(s.last_error) : ""}">${esc(s.name)}</span>`;
    }).join("")}</div>`;
  }

  function sagaRows(sagas, controls) {
    return sagas.map((s) => {
      const took = Date.parse(s.updated_at) - Date.parse(s.created_at);
      const control = !controls ? "" : s.status === "running"
        ? `<button class="danger" data-action="saga-cancel" data-id="${esc(s.id)}">cancel</button>`
        : s.status === "needs_attention" ? `<button data-action="saga-retry" data-id="${esc(s.id)}">retry</button>` : "";
      return `<tr data-saga="${esc(s.id)}"><td title="${esc(s.id)}">${esc(shortId(s.id))}</td><td>${esc(s.definition)}</td><td>${chip(s.status)}</td>
        <td class="w45">${timeline(s)}</td><td>${controls ? ago(Date.parse(s.created_at)) : `${took} ms`}</td><td>${control}</td></tr>
        ${s.error ? `<tr><td></td><td colspan="5" class="wrap muted">${esc(s.error)}</td></tr>` : ""}`;
    }).join("");
  }

  function renderSagas(frame) {
    const s = frame.sagas;
    const head = "<thead><tr><th>saga</th><th>definition</th><th>status</th><th>steps</th><th></th><th></th></tr></thead>";
    put(body("sagas"), `<div class="muted">${s.running_total} running · ${s.compensating_total} compensating · ${s.needs_attention_total} need attention</div>
      <h3>In flight</h3>${s.in_flight.length ? `<table>${head}<tbody>${sagaRows(s.in_flight, true)}</tbody></table>` : '<div class="empty">none</div>'}
      <h3>Recent outcomes</h3>${s.recent.length ? `<table>${head}<tbody>${sagaRows(s.recent, false)}</tbody></table>` : '<div class="empty">none yet</div>'}`);
  }

  function renderSimulations(frame) {
    const running = [];
    for (const panel of frame.nodes) {
      const queue = panel.simulations;
      if (!queue) continue;
      for (const job of queue.running) running.push({ node: panel.node, job, queued: false });
      for (const job of queue.queued) running.push({ node: panel.node, job, queued: true });
    }
    const live = running.map(({ node, job, queued }) => {
      const pct = job.progress ? job.progress.percent : 0;
      return `<tr data-sim-row="${esc(job.id)}"><td title="${esc(job.id)}">${esc(shortId(job.id))}</td><td>${esc(node)}</td><td>${chip(queued ? "queued" : "running")}</td>
        <td class="w40"><progress class="progress" data-sim="${esc(job.id)}" max="100" value="${pct.toFixed(1)}"></progress></td>
        <td>${pct.toFixed(0)}%</td><td>${compact(job.paths)} paths</td>
        <td><button class="danger" data-action="sim-cancel" data-id="${esc(job.id)}" data-node="${esc(node)}">cancel</button></td></tr>`;
    }).join("");
    const jobs = frame.simulations || [];
    const done = jobs.filter((j) => j.status === "done" && j.result);
    if (!state.selectedSim || !jobs.some((j) => j.id === state.selectedSim && j.result)) {
      state.selectedSim = done.length ? done[0].id : null;
    }
    const recent = jobs.map((j) => `<tr><td title="${esc(j.id)}">${esc(shortId(j.id))}</td><td>${chip(j.status)}</td>
      <td>${compact(j.request.paths)} paths</td><td>${j.result ? compact(j.result.npv.mean) : "-"}</td><td>${esc(j.engine || "")}</td>
      <td>${j.result ? `<button data-action="sim-show" data-id="${esc(j.id)}">${j.id === state.selectedSim ? "shown" : "show"}</button>` : ""}</td></tr>`).join("");
    const selected = jobs.find((j) => j.id === state.selectedSim);
    let chart = "";
    if (selected && selected.result) {
      const r = selected.result, p = r.npv.percentiles;
      chart = `<div class="muted">NPV of ${esc(shortId(selected.id))}: mean ${compact(r.npv.mean)} · P10 ${compact(p.p10)} · P50 ${compact(p.p50)} · P90 ${compact(p.p90)} · P(loss) ${(r.prob_loss * 100).toFixed(1)}%</div>
        <div class="sim-result"><figure><figcaption>NPV histogram</figcaption><div class="chart" id="sim-histogram">${Charts.histogram(r.histogram.edges, r.histogram.counts, [
          { at: p.p10, label: "P10", color: "#d29922" }, { at: p.p50, label: "P50", color: "#d8dee6" }, { at: p.p90, label: "P90", color: "#d29922" }])}</div></figure>
        <figure><figcaption>tornado: NPV with each driver at P10 / P90</figcaption><div class="chart" id="sim-tornado">${Charts.tornado(r.sensitivity, r.npv.mean)}</div></figure></div>`;
    }
    put(body("simulations"), `<h3>Running and queued</h3>${live ? `<table><tbody>${live}</tbody></table>` : '<div class="empty">none</div>'}
      <h3>Latest jobs</h3>${recent ? `<table><thead><tr><th>job</th><th>status</th><th>size</th><th>mean NPV</th><th>engine</th><th></th></tr></thead><tbody>${recent}</tbody></table>` : '<div class="empty">none yet</div>'}${chart}${realization(frame)}`);
  }

  // The models of the tenant's latest active plans: committed and realized
  // to date per day (the daily snapshots), the latest realization %. The
  // operator's frame has none.
  function realization(frame) {
    const charts = frame.realization || [];
    if (!charts.length) return "";
    const names = new Map((frame.simulations || []).filter((j) => j.model_id).map((j) => [j.model_id, j.model_name]));
    const figures = charts.map((c) => {
      const last = c.points[c.points.length - 1];
      const name = names.get(c.model_id) || shortId(c.model_id);
      const pct = last.realization_percent == null ? "nothing committed yet" : `${last.realization_percent.toFixed(1)}% realized`;
      return `<figure class="realization" data-model="${esc(c.model_id)}" data-percent="${last.realization_percent ?? ""}">
        <figcaption title="${esc(c.model_id)}">${esc(name)} · <b>${pct}</b> <span class="muted">${compact(last.realized)} of ${compact(last.committed)} on ${esc(last.day)}</span></figcaption>
        <div class="chart realization-chart">${Charts.realization(c.points)}</div></figure>`;
    }).join("");
    return `<h3>Realization <span class="muted">to date, per day</span></h3>
      <div class="legend"><span><i class="committed"></i>committed</span><span><i class="realized"></i>realized</span></div>
      <div class="realization-grid">${figures}</div>`;
  }

  function renderNotifications(frame) {
    const n = frame.notifications;
    const recent = n.recent.map((x) => `<tr><td>${time(x.updated_at_ms)}</td><td>${esc(x.event_type)}</td><td title="${esc(x.subscription_id)}">${esc(shortId(x.subscription_id))}</td><td>${chip(x.status)}</td><td>${x.attempts}</td></tr>`).join("");
    const failures = n.failures.map((a) => `<tr><td>${time(a.at_ms)}</td><td>${chip(a.outcome)}</td><td>${a.http_status ?? "-"}</td><td>#${a.attempt}</td><td class="wrap">${esc(a.error || "")}</td></tr>`).join("");
    put(body("notifications"), `<div class="charts"><div><h3>Recent notifications</h3>${recent ? `<table><thead><tr><th>at</th><th>event</th><th>subscription</th><th>status</th><th>attempts</th></tr></thead><tbody>${recent}</tbody></table>` : '<div class="empty">none yet</div>'}</div>
      <div><h3>Webhook failures</h3>${failures ? `<table><thead><tr><th>at</th><th>outcome</th><th>HTTP</th><th>attempt</th><th>error</th></tr></thead><tbody>${failures}</tbody></table>` : '<div class="empty">none</div>'}</div></div>`);
  }

  function renderAudit(frame) {
    const rows = (frame.audit || []).map((e) => `<tr><td>${time(Date.parse(e.at))}</td><td>${esc(e.actor)}</td><td>${esc(e.action)}</td><td title="${esc(e.target)}">${esc(e.target)}</td><td>${esc(e.outcome)}</td></tr>`).join("");
    put(body("audit"), rows ? `<table><thead><tr><th>at</th><th>who</th><th>what</th><th>target</th><th>outcome</th></tr></thead><tbody>${rows}</tbody></table>` : '<div class="empty">none yet (the operator sees no tenant\'s log)</div>');
  }

  connect();
})();
