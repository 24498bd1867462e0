// Kiln dashboard: a small single-page app with hash routes, no build step and no libraries.
// Data comes from the AWS Batch API the server speaks (POST /v1/<operation>), Kiln's log endpoint
// and a few read-only /kiln/v1/ endpoints. Every page refreshes itself once a second.
// Under `kiln server --auth sigv4` the page signs in with an access key once (POST /ui/session); the
// server answers with an HttpOnly session cookie that every same-origin request below carries.
"use strict";

const REFRESH_MS = 1000;
const STATUSES = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"];
const NOT_STARTED = ["SUBMITTED", "PENDING", "RUNNABLE"];
const TERMINAL = ["SUCCEEDED", "FAILED"];
// Same colours as style.css's .status-* classes, for the canvas grid.
const STATUS_COLOURS = {
  SUBMITTED: "#9aa5b1", PENDING: "#8e7cc3", RUNNABLE: "#e0a526", STARTING: "#5fb3d9",
  RUNNING: "#2f6fdf", SUCCEEDED: "#2e9e5b", FAILED: "#d64545",
};

// ---- small helpers ------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

class ApiError extends Error {
  constructor(status, type, message) {
    super(message || type || `HTTP ${status}`);
    this.status = status;
    this.type = type;
  }
}

async function readJson(response) {
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.__type, body.message);
  return body;
}

/** One AWS Batch operation, e.g. batch("describejobs", {jobs: [id]}). */
async function batch(operation, params) {
  const response = await fetch(`/v1/${operation}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(params || {}),
  });
  return readJson(response);
}

async function getJson(path) {
  return readJson(await fetch(path, { cache: "no-store", credentials: "same-origin" }));
}

function statusBadge(status) {
  return h("span", { class: `badge status-${(status || "").toLowerCase()}` }, status || "—");
}

function formatTime(ms) {
  if (!ms) return "—";
  const date = new Date(ms);
  const today = new Date();
  const time = date.toLocaleTimeString([], { hour12: false });
  return date.toDateString() === today.toDateString() ? time : `${date.toLocaleDateString()} ${time}`;
}

function formatDuration(start, stop) {
  if (!start) return "—";
  let seconds = Math.max(0, Math.round(((stop || Date.now()) - start) / 1000));
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  seconds %= 60;
  if (hours) return `${hours}h ${minutes}m`;
  if (minutes) return `${minutes}m ${seconds}s`;
  return `${seconds}s`;
}

function nameFromArn(arn) {
  return (arn || "").split("/").pop();
}

function jobLink(id, text) {
  return h("a", { href: `#/jobs/${encodeURIComponent(id)}` }, text || id);
}

function toast(message, kind) {
  const node = document.getElementById("toast");
  node.textContent = message;
  node.className = `toast ${kind || ""}`;
  node.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (node.hidden = true), 5000);
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty || "Nothing here yet.");
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((title) => h("th", {}, title)))),
    h("tbody", {}, rows));
}

function keyValues(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, value]) => value !== null && value !== undefined)
    .map(([key, value]) => [h("dt", {}, key), h("dd", {}, value)]));
}

function code(words) {
  return h("code", { class: "command" }, (words || []).map(shellQuote).join(" ") || "—");
}

function shellQuote(word) {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${String(word).replace(/'/g, "'\\''")}'`;
}

// ---- router and refresh loop ----------------------------------------------------------------
let currentView = null;
let refreshing = false;
let signInShown = false; // set while the sign-in form replaces the page (--auth sigv4 only)

function parseRoute() {
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query || "") };
}

function route() {
  if (signInShown) return; // the sign-in form holds the page until it succeeds
  const { parts, query } = parseRoute();
  const root = document.getElementById("view");
  if (currentView && currentView.leave) currentView.leave();
  let view;
  if (parts[0] === "jobs" && parts[1]) view = jobView(parts[1]);
  else if (parts[0] === "jobs") view = jobListView(query);
  else view = overviewView();
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (parts[0] === "jobs" ? "jobs" : "overview"));
  }
  currentView = view;
  fill(root, view.node);
  refresh();
}

async function refresh() {
  if (refreshing || !currentView || signInShown) return;
  refreshing = true;
  const view = currentView;
  const live = document.getElementById("live");
  try {
    await view.refresh();
    live.className = "live ok";
    live.textContent = `live · ${new Date().toLocaleTimeString([], { hour12: false })}`;
  } catch (error) {
    if (needsSignIn(error)) {
      showSignIn(error.message);
    } else {
      live.className = "live error";
      live.textContent = `offline: ${error.message}`;
    }
  } finally {
    refreshing = false;
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  await loadAccount();
  route();
  setInterval(refresh, REFRESH_MS);
});

// ---- sign-in: only on a server started with --auth sigv4 --------------------------------------
const MISSING_TOKEN = "MissingAuthenticationTokenException";

function needsSignIn(error) {
  return error instanceof ApiError && error.status === 403 && error.type === MISSING_TOKEN;
}

/** Who is signed in: 200 names the key, 403 asks for a sign-in, 404 means the server has no auth. */
async function loadAccount() {
  let response;
  try {
    response = await fetch("/ui/session", { cache: "no-store", credentials: "same-origin" });
  } catch (error) {
    return; // offline: the refresh loop says so
  }
  if (response.ok) showAccount((await response.json()).accessKeyId);
  else if (response.status === 403) showSignIn();
}

function showAccount(accessKeyId) {
  fill(document.getElementById("account"),
    h("span", { class: "mono", title: "Signed in with this access key" }, accessKeyId),
    h("button", { type: "button", "data-action": "sign-out", onclick: signOut }, "Sign out"));
}

async function signOut() {
  try {
    await fetch("/ui/session", { method: "DELETE", credentials: "same-origin", headers: { "content-type": "application/json" } });
  } finally {
    showSignIn();
  }
}

function showSignIn(reason) {
  fill(document.getElementById("account"));
  const live = document.getElementById("live");
  live.className = "live";
  live.textContent = "signed out";
  if (signInShown) return; // keep what is typed in the form already
  signInShown = true;
  if (currentView && currentView.leave) currentView.leave();
  currentView = null;
  const keyId = h("input", { name: "accessKeyId", autocomplete: "username", required: true, spellcheck: "false",
    placeholder: "AKIA..." });
  const secret = h("input", { name: "secretAccessKey", type: "password", autocomplete: "current-password", required: true });
  const problem = h("p", { class: "error", role: "alert" });
  const ended = reason && reason !== "Missing Authentication Token" ? reason : null;
  const form = h("form", { id: "sign-in", class: "panel sign-in", onsubmit: (event) => { event.preventDefault(); submit(); } },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "This server requires an access key (create one with ", h("code", {}, "kiln keys create"), ")."),
    ended ? h("p", { class: "muted small" }, ended) : null,
    h("label", {}, "Access key id", keyId),
    h("label", {}, "Secret access key", secret),
    problem,
    h("button", { type: "submit" }, "Sign in"));
  fill(document.getElementById("view"), form);
  keyId.focus();

  async function submit() {
    problem.textContent = "";
    let response;
    try {
      response = await fetch("/ui/session", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ accessKeyId: keyId.value.trim(), secretAccessKey: secret.value }),
      });
    } catch (error) {
      problem.textContent = `Sign-in failed: ${error.message}`;
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      problem.textContent = body.message || `Sign-in failed (HTTP ${response.status})`;
      secret.value = "";
      return;
    }
    secret.value = "";
    signInShown = false;
    showAccount(body.accessKeyId);
    route();
  }
}

// ---- overview: queues and compute environments -------------------------------------------------
function overviewView() {
  const queues = h("div", {});
  const environments = h("div", { class: "cards" });
  const node = h("section", {},
    h("h1", {}, "Queues & capacity"),
    h("h2", {}, "Job queues"), queues,
    h("h2", {}, "Compute environments"), environments);

  async function refreshView() {
    const [queueList, envList, capacity, counts] = await Promise.all([
      batch("describejobqueues", {}), batch("describecomputeenvironments", {}),
      getJson("/kiln/v1/capacity"), getJson("/kiln/v1/job-counts"),
    ]);
    const inUse = Object.fromEntries(capacity.computeEnvironments.map((c) => [c.computeEnvironmentName, c]));
    fill(queues, table(
      ["Queue", "State", "Priority", "Compute environments", ...STATUSES.map((s) => statusBadge(s))],
      queueList.jobQueues.map((queue) => {
        const perStatus = counts.queues[queue.jobQueueArn] || {};
        return h("tr", {},
          h("td", {}, h("a", { href: `#/jobs?queue=${encodeURIComponent(queue.jobQueueName)}` }, queue.jobQueueName)),
          h("td", {}, `${queue.state} · ${queue.status}`),
          h("td", { class: "num" }, queue.priority),
          h("td", {}, (queue.computeEnvironmentOrder || []).map((o) => nameFromArn(o.computeEnvironment)).join(", ")),
          STATUSES.map((status) => h("td", { class: "num" }, perStatus[status] ? h("a", {
            href: `#/jobs?queue=${encodeURIComponent(queue.jobQueueName)}&status=${status}`,
          }, perStatus[status]) : h("span", { class: "muted" }, "0"))));
      }),
      "No job queues yet: create one with aws batch create-job-queue or run kiln render."));
    fill(environments, envList.computeEnvironments.length
      ? envList.computeEnvironments.map((env) => environmentCard(env, inUse[env.computeEnvironmentName], capacity.host))
      : h("p", { class: "empty" }, "No compute environments yet."));
  }
  return { node, refresh: refreshView };
}

function environmentCard(env, used, host) {
  const held = used || { runningAttempts: 0, vcpus: 0, memoryMiB: 0, gpus: 0 };
  const maxVcpus = (env.computeResources && env.computeResources.maxvCpus) || host.vcpus;
  const vcpuLimit = Math.min(maxVcpus, host.vcpus);
  return h("div", { class: "card", "data-ce": env.computeEnvironmentName },
    h("div", { class: "card-title" }, env.computeEnvironmentName,
      h("span", { class: "muted" }, ` ${env.type || ""} · ${env.state} · ${env.status}`)),
    meter("vCPUs", held.vcpus, vcpuLimit, `${fmtNumber(held.vcpus)} of ${vcpuLimit}` +
      (maxVcpus > host.vcpus ? ` (maxvCpus ${maxVcpus}, host ${host.vcpus})` : "")),
    meter("Memory", held.memoryMiB, host.memoryMiB, `${fmtMiB(held.memoryMiB)} of ${fmtMiB(host.memoryMiB)} (host)`),
    host.gpus || held.gpus ? meter("GPUs", held.gpus, host.gpus, `${held.gpus} of ${host.gpus || 0} (host)`) : null,
    h("div", { class: "muted small" }, `${held.runningAttempts} running attempt${held.runningAttempts === 1 ? "" : "s"}`));
}

function meter(label, value, total, text) {
  const percent = total ? Math.min(100, (100 * value) / total) : 0;
  return h("div", { class: "meter" },
    h("div", { class: "meter-label" }, h("span", {}, label), h("span", { class: "muted" }, text)),
    h("div", { class: "meter-bar" }, h("div", { class: "meter-fill", style: `width:${percent.toFixed(1)}%` })));
}

function fmtNumber(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

function fmtMiB(mib) {
  return mib >= 1024 ? `${(mib / 1024).toFixed(1)} GiB` : `${mib} MiB`;
}

// ---- job list -----------------------------------------------------------------------------------
function jobListView(query) {
  const state = { queue: query.get("queue") || "", status: query.get("status") || "", name: query.get("name") || "" };
  const queueSelect = h("select", { name: "queue" }, h("option", { value: "" }, "all queues"));
  const statusSelect = h("select", { name: "status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === state.status }, s)));
  const nameInput = h("input", { name: "name", type: "search", placeholder: "name (prefix*)", value: state.name });
  const form = h("form", { class: "filters", onsubmit: (event) => { event.preventDefault(); apply(); } },
    queueSelect, statusSelect, nameInput, h("button", { type: "submit" }, "Filter"));
  for (const input of [queueSelect, statusSelect]) input.addEventListener("change", () => apply());
  const results = h("div", {});
  const note = h("p", { class: "muted small" });
  const node = h("section", {}, h("h1", {}, "Jobs"), form, note, results);

  function apply() {
    const params = new URLSearchParams();
    if (queueSelect.value) params.set("queue", queueSelect.value);
    if (statusSelect.value) params.set("status", statusSelect.value);
    if (nameInput.value.trim()) params.set("name", nameInput.value.trim());
    location.hash = `#/jobs${params.toString() ? "?" + params : ""}`;
  }

  async function listQueue(queueName) {
    const request = { jobQueue: queueName, maxResults: 100 };
    // ListJobs takes one filter; a name filter returns every status, so the status is applied here.
    if (state.name) request.filters = [{ name: "JOB_NAME", values: [state.name] }];
    else if (state.status) request.jobStatus = state.status;
    else request.filters = [{ name: "AFTER_CREATED_AT", values: ["0"] }]; // every status
    const page = await batch("listjobs", request);
    return page.jobSummaryList.map((job) => ({ ...job, queueName }))
      .filter((job) => !state.status || job.status === state.status);
  }

  async function refreshView() {
    const queues = (await batch("describejobqueues", {})).jobQueues.map((q) => q.jobQueueName);
    if (queueSelect.options.length === 1) {
      queueSelect.append(...queues.map((q) => h("option", { value: q, selected: q === state.queue }, q)));
    }
    const chosen = state.queue ? [state.queue] : queues;
    const jobs = (await Promise.all(chosen.map(listQueue))).flat().sort((a, b) => b.createdAt - a.createdAt);
    note.textContent = `${jobs.length} job${jobs.length === 1 ? "" : "s"} (newest 100 per queue)`;
    fill(results, table(["Name", "Status", "Queue", "Array", "Created", "Runtime", "Exit", "Reason"],
      jobs.map((job) => h("tr", { "data-job": job.jobId },
        h("td", {}, jobLink(job.jobId, job.jobName), h("div", { class: "muted small mono" }, job.jobId)),
        h("td", {}, statusBadge(job.status)),
        h("td", {}, job.queueName),
        h("td", {}, job.arrayProperties ? (job.arrayProperties.size !== undefined
          ? `${job.arrayProperties.size} children` : `index ${job.arrayProperties.index}`) : ""),
        h("td", {}, formatTime(job.createdAt)),
        h("td", {}, formatDuration(job.startedAt, job.stoppedAt)),
        h("td", { class: "num" }, job.container && job.container.exitCode !== undefined ? job.container.exitCode : ""),
        h("td", { class: "reason" }, (job.container && job.container.reason) || job.statusReason || ""))),
      "No jobs match."));
  }
  return { node, refresh: refreshView };
}

// ---- job page ---------------------------------------------------------------------------------
function jobView(jobId) {
  const title = h("h1", {}, jobId);
  const actions = h("div", { class: "actions" });
  const summary = h("div", { class: "panel" });
  const container = h("div", { class: "panel" });
  const attempts = h("div", { class: "panel" });
  const arraySection = h("div", {});
  const renderSection = h("div", {});
  const logSection = h("div", {});
  const node = h("section", {}, h("div", { class: "job-head" }, title, actions),
    h("div", { class: "columns" }, h("div", {}, h("h2", {}, "Summary"), summary),
      h("div", {}, h("h2", {}, "Container"), container)),
    arraySection, renderSection, logSection,
    h("h2", {}, "Attempts"), attempts);
  let definition = null;
  let grid = null;
  let frames = null;
  let log = null;
  let lastStatus = null;

  async function refreshView() {
    const found = (await batch("describejobs", { jobs: [jobId] })).jobs;
    if (!found.length) {
      fill(summary, h("p", { class: "error" }, `Job ${jobId} not found (it may have been purged).`));
      return;
    }
    const job = found[0];
    if (!definition) {
      const defs = await batch("describejobdefinitions", { jobDefinitions: [job.jobDefinition] });
      definition = defs.jobDefinitions[0] || {};
    }
    const parentId = jobId.includes(":") ? jobId.split(":")[0] : null;
    fill(title, job.jobName, " ", statusBadge(job.status));
    if (job.status !== lastStatus) fill(actions, jobActions(job, parentId));
    lastStatus = job.status;
    fill(summary, summaryPairs(job, parentId));
    fill(container, containerPairs(job, definition));
    fill(attempts, attemptsTable(job));
    const isParent = job.arrayProperties && job.arrayProperties.size !== undefined;
    if (isParent) {
      if (!grid) {
        grid = arrayGrid(jobId, job.arrayProperties.size);
        fill(arraySection, h("h2", {}, `Array: ${job.arrayProperties.size} children`), grid.node);
      }
      await grid.refresh();
    } else {
      if (!log) {
        log = logTail(jobId);
        fill(logSection, h("h2", {}, "Log"), log.node);
      }
      await log.refresh(job);
    }
    if (frames === null) {
      frames = isRenderJob(job) ? renderPanel(jobId) : false;
      if (frames) fill(renderSection, h("h2", {}, "Render"), frames.node);
    }
    if (frames) await frames.refresh();
  }
  return { node, refresh: refreshView };
}

function isRenderJob(job) {
  const container = job.container || {};
  const command = container.command || [];
  return (container.image || "").replace(/:latest$/, "") === "kiln/render" && ["render", "stitch"].includes(command[0]);
}

function summaryPairs(job, parentId) {
  const array = job.arrayProperties || {};
  const summaryCounts = array.statusSummary
    ? h("span", { class: "counts" }, STATUSES.filter((s) => array.statusSummary[s])
      .map((s) => h("span", {}, statusBadge(s), ` ${array.statusSummary[s]}`)))
    : null;
  return keyValues([
    ["Job id", h("span", { class: "mono" }, job.jobId)],
    ["Status reason", job.statusReason || "—"],
    ["Queue", h("a", { href: `#/jobs?queue=${encodeURIComponent(nameFromArn(job.jobQueue))}` }, nameFromArn(job.jobQueue))],
    ["Definition", nameFromArn(job.jobDefinition)],
    parentId ? ["Array parent", h("span", {}, jobLink(parentId), ` (index ${array.index})`)] : [null, null],
    array.size !== undefined ? ["Children", summaryCounts] : [null, null],
    ["Created", formatTime(job.createdAt)],
    ["Started", formatTime(job.startedAt)],
    ["Stopped", formatTime(job.stoppedAt)],
    ["Runtime", formatDuration(job.startedAt, job.stoppedAt)],
    ["Depends on", (job.dependsOn || []).length
      ? h("span", {}, job.dependsOn.map((d) => h("span", {}, jobLink(d.jobId), d.type ? ` (${d.type}) ` : " ")))
      : "—"],
    ["Retry strategy", job.retryStrategy ? `${job.retryStrategy.attempts || 1} attempt(s)` +
      ((job.retryStrategy.evaluateOnExit || []).length ? `, ${job.retryStrategy.evaluateOnExit.length} evaluateOnExit rule(s)` : "") : "—"],
    ["Timeout", job.timeout && job.timeout.attemptDurationSeconds ? `${job.timeout.attemptDurationSeconds} s` : "—"],
    job.isCancelled ? ["Cancelled", "yes"] : [null, null],
    job.isTerminated ? ["Terminated", "yes"] : [null, null],
  ].filter(([key]) => key));
}

/** The containers of an ecsProperties job: one line each (name, image, exit code, command). */
function taskContainers(job) {
  const task = ((job.ecsProperties || {}).taskProperties || [])[0] || {};
  return keyValues((task.containers || []).map((c) => [
    `${c.name}${c.essential === false ? "" : " (essential)"}`,
    h("span", {}, h("span", { class: "mono" }, (c.image || "").replace(/:latest$/, "")),
      c.exitCode !== undefined ? ` · exit ${c.exitCode}` : "", c.reason ? ` · ${c.reason}` : "", " ", code(c.command)),
  ]));
}

/** The containers of an eksProperties job: its init containers, then its containers (name, image, exit code, command and args). */
function podContainers(job) {
  const pod = (job.eksProperties || {}).podProperties || {};
  const line = (c, init) => [
    `${c.name || "default"}${init ? " (init)" : ""}`,
    h("span", {}, h("span", { class: "mono" }, (c.image || "").replace(/:latest$/, "")),
      c.exitCode !== undefined ? ` · exit ${c.exitCode}` : "", c.reason ? ` · ${c.reason}` : "", " ",
      code([...(c.command || []), ...(c.args || [])])),
  ];
  return keyValues([...(pod.initContainers || []).map((c) => line(c, true)), ...(pod.containers || []).map((c) => line(c, false))]);
}

/** A job's finished attempts, as `attempts` shows them (an eksProperties job's from `eksAttempts`:
 * the exit code and reason of its first failing container, else 0). */
function finishedAttempts(job) {
  if (!job.eksAttempts) return job.attempts || [];
  return job.eksAttempts.map((a) => {
    const all = [...(a.initContainers || []), ...(a.containers || [])];
    const failed = all.find((c) => c.exitCode !== undefined && c.exitCode !== 0) || all.find((c) => c.reason);
    return { startedAt: a.startedAt, stoppedAt: a.stoppedAt, statusReason: a.statusReason,
      container: failed ? { exitCode: failed.exitCode, reason: failed.reason } : { exitCode: all.length ? 0 : undefined } };
  });
}

function containerPairs(job, definition) {
  if (job.ecsProperties) return taskContainers(job);
  if (job.eksProperties) return podContainers(job);
  const c = job.container || {};
  const environment = (c.environment || []).slice().sort((a, b) => a.name.localeCompare(b.name));
  const resources = (c.resourceRequirements || []).map((r) => `${r.type} ${r.value}`);
  if (!resources.length && c.vcpus) resources.push(`VCPU ${c.vcpus}`);
  if (c.memory && !(c.resourceRequirements || []).some((r) => r.type === "MEMORY")) resources.push(`MEMORY ${c.memory}`);
  const defCommand = ((definition && definition.containerProperties) || {}).command;
  return keyValues([
    ["Image", h("span", { class: "mono" }, c.image || "—")],
    ["Definition command", code(defCommand)],
    ["Command (resolved)", code(c.command)],
    ["Parameters", Object.keys(job.parameters || {}).length
      ? h("span", { class: "mono" }, Object.entries(job.parameters).map(([k, v]) => `${k}=${v}`).join("  ")) : "—"],
    ["Resources", resources.join(" · ") || "—"],
    ["Environment", environment.length
      ? h("table", { class: "env" }, environment.map((e) => h("tr", {}, h("td", { class: "mono" }, e.name), h("td", { class: "mono" }, e.value))))
      : "—"],
  ]);
}

function attemptsTable(job) {
  const rows = finishedAttempts(job).map((attempt, index) => h("tr", {},
    h("td", { class: "num" }, index + 1),
    h("td", {}, formatTime(attempt.startedAt)),
    h("td", {}, formatTime(attempt.stoppedAt)),
    h("td", {}, formatDuration(attempt.startedAt, attempt.stoppedAt)),
    h("td", { class: "num" }, attempt.container && attempt.container.exitCode !== undefined ? attempt.container.exitCode : "—"),
    h("td", { class: "reason" }, (attempt.container && attempt.container.reason) || ""),
    h("td", { class: "reason" }, attempt.statusReason || "")));
  if (["STARTING", "RUNNING"].includes(job.status)) {
    rows.push(h("tr", { class: "current" }, h("td", { class: "num" }, rows.length + 1),
      h("td", {}, formatTime(job.startedAt)), h("td", {}, "—"), h("td", {}, formatDuration(job.startedAt)),
      h("td", {}, "—"), h("td", {}, statusBadge(job.status)), h("td", {}, "")));
  }
  return table(["#", "Started", "Stopped", "Ran", "Exit code", "Reason", "Status reason"], rows,
    job.arrayProperties && job.arrayProperties.size !== undefined
      ? "An array parent runs no attempts itself: open a child from the grid."
      : "No attempt yet.");
}

function jobActions(job, parentId) {
  const buttons = [];
  if (NOT_STARTED.includes(job.status)) {
    buttons.push(h("button", { class: "danger", "data-action": "cancel", onclick: () => stopJob(job, "canceljob") }, "Cancel"));
  }
  if (!TERMINAL.includes(job.status)) {
    buttons.push(h("button", { class: "danger", "data-action": "terminate", onclick: () => stopJob(job, "terminatejob") }, "Terminate"));
  }
  if (!parentId) {
    buttons.push(h("button", { "data-action": "retry", onclick: () => retryAsNew(job) }, "Retry as new job"));
  }
  return buttons;
}

async function stopJob(job, operation) {
  const verb = operation === "canceljob" ? "Cancel" : "Terminate";
  const done = operation === "canceljob" ? "Cancelled" : "Terminated";
  if (!window.confirm(`${verb} ${job.jobName} (${job.jobId})?`)) return;
  try {
    await batch(operation, { jobId: job.jobId, reason: `${done} from the Kiln dashboard` });
    toast(`${verb} requested for ${job.jobName}`, "ok");
    refresh();
  } catch (error) {
    if (needsSignIn(error)) showSignIn(error.message);
    else toast(`${verb} failed: ${error.message}`, "error");
  }
}

/** A container's resolved command, environment and resources as overrides (`name` for a task's). */
function resolvedOverrides(c) {
  const overrides = { command: c.command || [] };
  if (c.name !== undefined) overrides.name = c.name;
  overrides.environment = (c.environment || []).filter((e) => !e.name.startsWith("AWS_BATCH"));
  if ((c.resourceRequirements || []).length) overrides.resourceRequirements = c.resourceRequirements;
  return overrides;
}

/** Resubmit with the same definition, queue and resolved container(s) (command after Ref::, env, resources). */
async function retryAsNew(job) {
  if (!window.confirm(`Submit a new job like ${job.jobName}, without its dependencies?`)) return;
  const request = { jobName: job.jobName, jobQueue: job.jobQueue, jobDefinition: job.jobDefinition };
  if (job.ecsProperties) {  // a multi-container job: each container overridden by name
    const task = (job.ecsProperties.taskProperties || [])[0] || {};
    request.ecsPropertiesOverride = { taskProperties: [{ containers: (task.containers || []).map(resolvedOverrides) }] };
  } else if (job.eksProperties) {  // a pod: each container and init container overridden by name
    const pod = job.eksProperties.podProperties || {};
    const overrides = (c) => ({ name: c.name, image: c.image, command: c.command, args: c.args,
      env: (c.env || []).filter((e) => !e.name.startsWith("AWS_BATCH")), resources: c.resources });
    request.eksPropertiesOverride = { podProperties: { containers: (pod.containers || []).map(overrides) } };
    if ((pod.initContainers || []).length) request.eksPropertiesOverride.podProperties.initContainers = pod.initContainers.map(overrides);
  } else {
    request.containerOverrides = resolvedOverrides(job.container || {});
  }
  if (job.arrayProperties && job.arrayProperties.size) request.arrayProperties = { size: job.arrayProperties.size };
  if (job.retryStrategy) request.retryStrategy = job.retryStrategy;
  if (job.timeout && job.timeout.attemptDurationSeconds) request.timeout = job.timeout;
  if (job.tags && Object.keys(job.tags).length) request.tags = job.tags;
  if (job.shareIdentifier) request.shareIdentifier = job.shareIdentifier;
  if (job.schedulingPriority !== undefined && job.shareIdentifier) request.schedulingPriorityOverride = job.schedulingPriority;
  try {
    const submitted = await batch("submitjob", request);
    toast(`Submitted ${submitted.jobName} as ${submitted.jobId}`, "ok");
    location.hash = `#/jobs/${encodeURIComponent(submitted.jobId)}`;
  } catch (error) {
    if (needsSignIn(error)) showSignIn(error.message);
    else toast(`Retry failed: ${error.message}`, "error");
  }
}

// ---- live log ---------------------------------------------------------------------------------------
function logTail(jobId) {
  const pre = h("pre", { class: "log", "data-log": jobId });
  const info = h("div", { class: "muted small" });
  const follow = h("input", { type: "checkbox", checked: true });
  const node = h("div", { class: "panel" },
    h("div", { class: "log-bar" }, info, h("label", { class: "small" }, follow, " follow")), pre);
  let attempt = 0;
  let offset = 0;
  let finished = false;

  async function refreshLog(job) {
    const started = finishedAttempts(job).length + (["STARTING", "RUNNING"].includes(job.status) ? 1 : 0);
    if (started === 0) {
      info.textContent = "No attempt has started yet; the log appears once one runs.";
      return;
    }
    if (started !== attempt) { // a new attempt: show its log from the start
      attempt = started;
      offset = 0;
      finished = false;
      pre.textContent = "";
    }
    for (let reads = 0; !finished && reads < 8; reads++) { // a few MiB per tick at most
      let chunk;
      try {
        chunk = await getJson(`/kiln/v1/logs/${encodeURIComponent(jobId)}?attempt=${attempt}&offset=${offset}`);
      } catch (error) {
        if (error.status === 400 || error.status === 404) { info.textContent = error.message; return; }
        throw error;
      }
      if (chunk.text) {
        pre.append(chunk.text);
        if (follow.checked) pre.scrollTop = pre.scrollHeight;
      }
      const grew = chunk.nextOffset > offset;
      offset = chunk.nextOffset;
      finished = chunk.finished;
      if (!grew) break;
    }
    info.textContent = `attempt ${attempt} · ${chunk_name(offset)} · ${finished ? "complete" : "tailing"}`;
  }
  return { node, refresh: refreshLog };
}

function chunk_name(bytes) {
  return bytes >= 1024 * 1024 ? `${(bytes / 1048576).toFixed(1)} MiB` : bytes >= 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : `${bytes} bytes`;
}

// ---- array grid: one canvas cell per child -------------------------------------------------------
function arrayGrid(parentId, size) {
  const cell = size <= 100 ? 22 : size <= 1000 ? 14 : 9;
  const gap = size <= 1000 ? 2 : 1;
  const canvas = h("canvas", { id: "array-grid", class: "grid", "data-size": size, "data-cell": cell, "data-gap": gap });
  const tip = h("div", { class: "grid-tip", hidden: true });
  const legend = h("div", { class: "legend" });
  const node = h("div", { class: "panel grid-panel" }, legend, h("div", { class: "grid-wrap" }, canvas, tip));
  const statuses = new Array(size).fill(null);
  let columns = 0;

  function layout() {
    const width = Math.max(200, canvas.parentElement ? canvas.parentElement.clientWidth : 800);
    columns = Math.max(1, Math.floor((width + gap) / (cell + gap)));
    const rows = Math.ceil(size / columns);
    const ratio = window.devicePixelRatio || 1;
    canvas.style.width = `${columns * (cell + gap) - gap}px`;
    canvas.style.height = `${rows * (cell + gap) - gap}px`;
    canvas.width = Math.round((columns * (cell + gap) - gap) * ratio);
    canvas.height = Math.round((rows * (cell + gap) - gap) * ratio);
    canvas.dataset.columns = columns;
    canvas.dataset.ratio = ratio;
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    statuses.forEach((status, index) => paint(context, index, status));
  }

  function paint(context, index, status) {
    const x = (index % columns) * (cell + gap);
    const y = Math.floor(index / columns) * (cell + gap);
    context.fillStyle = STATUS_COLOURS[status] || "#e4e7eb";
    context.fillRect(x, y, cell, cell);
  }

  function indexAt(event) {
    const box = canvas.getBoundingClientRect();
    const column = Math.floor((event.clientX - box.left) / (cell + gap));
    const row = Math.floor((event.clientY - box.top) / (cell + gap));
    const index = row * columns + column;
    return column < columns && index >= 0 && index < size ? index : null;
  }

  canvas.addEventListener("mousemove", (event) => {
    const index = indexAt(event);
    tip.hidden = index === null;
    if (index === null) return;
    tip.textContent = `#${index} · ${statuses[index] || "?"}`;
    const box = canvas.getBoundingClientRect();
    tip.style.left = `${event.clientX - box.left + 12}px`;
    tip.style.top = `${event.clientY - box.top + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => (tip.hidden = true));
  canvas.addEventListener("click", (event) => {
    const index = indexAt(event);
    if (index !== null) location.hash = `#/jobs/${encodeURIComponent(`${parentId}:${index}`)}`;
  });
  window.addEventListener("resize", () => columns && layout());

  async function refreshGrid() {
    const answer = await getJson(`/kiln/v1/arrays/${encodeURIComponent(parentId)}/children`);
    if (!columns) layout();
    const context = canvas.getContext("2d");
    const counts = {};
    for (const [index, status] of answer.children) {
      counts[status] = (counts[status] || 0) + 1;
      if (statuses[index] !== status) {
        statuses[index] = status;
        paint(context, index, status);
      }
    }
    canvas.dataset.updated = String(Date.now());
    fill(legend, STATUSES.map((s) => h("span", { class: "legend-item", "data-status": s },
      h("span", { class: "swatch", style: `background:${STATUS_COLOURS[s]}` }), `${s.toLowerCase()} ${counts[s] || 0}`)),
      h("span", { class: "muted small" }, "click a cell to open that child"));
  }
  return { node, refresh: refreshGrid };
}

// ---- render output: thumbnails and video ----------------------------------------------------------
function renderPanel(jobId) {
  const where = h("div", { class: "muted small mono" });
  const thumbs = h("div", { class: "thumbs" });
  const videoBox = h("div", { class: "video-box" });
  const node = h("div", { class: "panel" }, where, thumbs, videoBox);
  const shown = new Map(); // frame number -> tile
  let videoSize = null;

  async function refreshRender() {
    const listing = await getJson(`/kiln/v1/renders/${encodeURIComponent(jobId)}`);
    fill(where, `frames: ${listing.framesUri}/frames · video: ${listing.videoUri}/output.mp4`,
      listing.error ? h("div", { class: "error" }, listing.error) : null);
    if (listing.expected && listing.expected.width && listing.expected.height) {
      thumbs.style.setProperty("--frame-aspect", `${listing.expected.width} / ${listing.expected.height}`);
    }
    const landed = new Map(listing.frames.map((f) => [f.frame, f.name]));
    let numbers = [...landed.keys()];
    if (listing.expected) {
      numbers = [];
      for (let n = listing.expected.first; n <= listing.expected.last; n += listing.expected.step) numbers.push(n);
      if (numbers.length > 2000) numbers = [...landed.keys()]; // huge ranges: landed frames only
    }
    if (numbers.length !== shown.size || numbers.some((n) => !shown.has(n))) {
      shown.clear();
      fill(thumbs, numbers.map((n) => {
        const tile = h("figure", { class: "thumb pending", "data-frame": n }, h("div", { class: "placeholder" }), h("figcaption", {}, `frame ${n}`));
        shown.set(n, tile);
        return tile;
      }));
    }
    for (const [n, name] of landed) {
      const tile = shown.get(n);
      if (!tile || !tile.classList.contains("pending")) continue;
      const src = `/kiln/v1/renders/${encodeURIComponent(jobId)}/frames/${encodeURIComponent(name)}`;
      tile.classList.remove("pending");
      tile.firstChild.replaceWith(h("img", { src, alt: `frame ${n}`, loading: "lazy",
        onclick: () => openLightbox(src, `frame ${n}`) }));
    }
    if (!numbers.length) fill(thumbs, h("p", { class: "empty" }, "No frame has landed yet."));
    if (listing.videoSize && listing.videoSize !== videoSize) {
      videoSize = listing.videoSize;
      fill(videoBox, h("video", { id: "render-video", controls: true, preload: "metadata", muted: true,
        src: `/kiln/v1/renders/${encodeURIComponent(jobId)}/video?size=${videoSize}` }),
        h("div", { class: "muted small" }, `output.mp4 · ${chunk_name(videoSize)}`));
    } else if (!listing.videoSize && !videoBox.childNodes.length) {
      fill(videoBox, h("p", { class: "empty" }, "The video appears here once the stitch job has written output.mp4."));
    }
  }
  return { node, refresh: refreshRender };
}

function openLightbox(src, caption) {
  const box = document.getElementById("lightbox");
  box.querySelector("img").src = src;
  box.querySelector("p").textContent = caption;
  box.hidden = false;
  box.onclick = () => (box.hidden = true);
}
