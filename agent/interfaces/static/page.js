// Setpoint's live status page: one EventSource, the DOM built with textContent only.
"use strict";

let view = null;
let received = 0;
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function age(seconds) {
  const s = Math.max(0, seconds);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${(s / 86400).toFixed(1)}d`;
}

function elapsed() { return (Date.now() - received) / 1000; }

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
}

function actionButton(label, command, service) {
  const b = el("button", label);
  b.type = "button";
  b.dataset.command = command;
  b.dataset.service = service || "";
  b.addEventListener("click", () => send(command, service || ""));
  return b;
}

async function send(command, service) {
  const token = sessionStorage.getItem("setpoint-token") || "";
  const who = sessionStorage.getItem("setpoint-operator") || "";
  const headers = { "Content-Type": "application/json", "Authorization": `Bearer ${token}` };
  if (who) headers["X-Setpoint-Operator"] = who;
  const body = JSON.stringify(service ? { command, service } : { command });
  const resp = await fetch("/api/v1/commands", { method: "POST", headers, body });
  const reply = await resp.json().catch(() => ({}));
  $("answer").textContent = resp.ok
    ? `accepted: ${command.replace("_", " ")} ${service || ""} (by ${reply.by})`
    : `refused (${resp.status}): ${reply.error || resp.statusText}`;
}

// The lifecycle, and beside it the service's phase (seed 000), e.g. "Running · Syncing 3m 2s".
function lifecycle(s) {
  const cell = el("span");
  cell.append(el("span", s.lifecycle, s.lifecycle));
  if (s.phase) cell.append(" · ", el("span", `${s.phase} ${age(s.phase_for_seconds)}`, "phase"));
  else if (s.phase_error) {
    cell.append(" · ", el("span", "phase unknown", "phase"));
    cell.title = s.phase_error;
  }
  return cell;
}

function services(v) {
  const body = $("services").querySelector("tbody");
  body.replaceChildren();
  for (const [name, s] of Object.entries(v.services)) {
    const probes = s.probes.map((p) => `${p.name} ${p.latency_ms} ms${p.over_budget ? " (over budget)" : ""}`);
    const note = [s.maintenance ? "maintenance" : "", s.gave_up ? "gave up" : "", s.reason].filter(Boolean).join("; ");
    const acts = el("span");
    if (v.actions) {
      acts.appendChild(s.maintenance ? actionButton("maintenance off", "maintenance_off", name)
                                     : actionButton("maintenance on", "maintenance_on", name));
      acts.appendChild(actionButton("reset", "reset", name));
    }
    const tr = row([name, lifecycle(s), el("span", "", "age"),
      s.sub ? `${s.active}/${s.sub}` : s.active, el("span", s.health, s.health),
      probes.join(", ") || "–", String(s.restarts), note, acts]);
    tr.id = `service-${name}`;
    tr.dataset.lifecycle = s.lifecycle;
    tr.dataset.phase = s.phase || "";
    tr.dataset.restarts = String(s.restarts);
    tr.dataset.for = String(s.for_seconds);
    body.appendChild(tr);
  }
}

function domains(v) {
  const box = $("domains");
  box.replaceChildren();
  for (const [name, d] of Object.entries(v.domains)) {
    const div = el("div", null, "domain");
    const head = el("div");
    head.append(el("strong", name), " ", el("span", d.satisfied ? "goal holds" : "goal BROKEN", d.satisfied ? "holds" : "broken"));
    if (d.error) head.append(" ", el("span", `paused: ${d.error}`, "broken"));
    div.append(head, el("div", d.goal, "mono"));
    const values = Object.entries(d.values).map(([k, val]) => `${k}=${val}`).join(", ");
    div.append(el("div", `variables: ${values || "–"}`));
    if (d.in_flight.length) div.append(el("div", `in flight: ${d.in_flight.join(", ")}`));
    for (const t of d.transitions) {
      const line = el("div");
      line.append(el("time", t.time.slice(11, 23), "when"), t.text);
      div.append(line);
    }
    box.appendChild(div);
  }
  if (!box.children.length) box.textContent = "none";
}

function list(id, items, render) {
  const box = $(id);
  box.replaceChildren(...items.map(render));
  if (!items.length) box.appendChild(el("li", "none", "unknown"));
}

function render(v) {
  const mode = $("mode");
  mode.textContent = v.maintenance ? "maintenance mode: ON" : "acting";
  mode.className = v.maintenance ? "badge maint" : "badge on";
  if (v.journal && v.journal.degraded) {
    mode.textContent = `JOURNAL DEGRADED for ${age(v.journal.for_seconds)}: ${v.journal.error} — supervising without a record`;
    mode.className = "badge maint";
  }
  services(v);
  domains(v);
  const routes = $("routes").querySelector("tbody");
  routes.replaceChildren(...Object.entries(v.groups).map(([n, g]) => row([n, g.route || "–", g.applied || "–", String(g.switches)])));
  list("alerts", v.alerts, (a) => {
    const li = el("li");
    li.append(el("span", a.severity, a.severity), ` ${a.name} (${a.subject}): ${a.summary} — for ${age(a.for_seconds)}`);
    return li;
  });
  list("pending", v.pending, (p) => el("li", p, "mono"));
  list("history", v.history, (h) => {
    const li = el("li");
    li.append(el("time", h.time.slice(11, 23)), h.text);
    return li;
  });
  $("operator").hidden = !v.actions;
  const agent = $("agent-actions");
  agent.replaceChildren();
  if (v.actions) {
    agent.append(v.maintenance ? actionButton("agent maintenance off", "maintenance_off")
                               : actionButton("agent maintenance on", "maintenance_on"),
                 actionButton("resync with systemd", "resync"));
  }
  tick();
}

function tick() {
  if (!view) return;
  for (const tr of document.querySelectorAll("#services tbody tr")) {
    tr.querySelector(".age").textContent = age(Number(tr.dataset.for) + elapsed());
  }
  $("clock").textContent = new Date(view.now * 1000 + elapsed() * 1000).toLocaleTimeString();
}

function connect() {
  const source = new EventSource("/api/v1/events");
  source.onopen = () => { $("link").textContent = "live"; $("link").className = "badge on"; };
  source.onerror = () => { $("link").textContent = "reconnecting"; $("link").className = "badge off"; };
  source.onmessage = (event) => {
    view = JSON.parse(event.data);
    received = Date.now();
    render(view);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("setpoint-token", $("token").value);
    sessionStorage.setItem("setpoint-operator", $("operator-name").value);
    $("answer").textContent = "token kept for this tab";
  });
  setInterval(tick, 1000);
  connect();
});
