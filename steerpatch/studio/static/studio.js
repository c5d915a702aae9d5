// steerpatch studio: a plain page over the JSON API. No build step, no dependencies.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  info: null,
  key: null,          // the instance being inspected
  instance: null,
  latents: [],        // attribution rows shown
  scores: {},         // latent -> attribution score, for provenance
  edits: new Map(),   // latent -> {op, value}: one edit per latent
  offset: 0,
  steerSeq: 0,
  steerTimer: null,
  saved: null,        // name of the last saved patch
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function showMessage(text, ok = false) {
  const box = $("#message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

// the per-session token this page was served with; every POST carries it (see studio/guard.py)
const TOKEN = document.querySelector('meta[name="steerpatch-token"]').content;

async function api(path, options = {}) {
  if (options.method && options.method !== "GET") {
    options = { ...options, headers: { ...(options.headers || {}), "X-Steerpatch-Token": TOKEN } };
  }
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = (body && body.error) || `${response.status} ${response.statusText}`;
    showMessage(message);
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

const postJSON = (path, data) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });

function pct(p) { return (100 * p).toFixed(1) + "%"; }

// ---- browsing ---------------------------------------------------------------------------------

async function loadInfo() {
  const info = await api("/api/info");
  state.info = info;
  $("#info").textContent =
    `model ${info.model} · SAE ${info.sae_architecture} ${info.d_sae} latents at block ${info.block} · ` +
    `${info.n_items} images, zero-shot accuracy ${info.accuracy === null ? "–" : pct(info.accuracy)}`;
  for (const c of info.classes) {
    $("#f-class").append(el("option", { value: c }, c));
    $("#against").append(el("option", { value: c }, c));
    $("#suggest-label").append(el("option", { value: c }, c));
  }
  if (info.group_by) {
    $("#f-group").previousSibling.textContent = `Group (${info.group_by}) `;
    for (const g of info.groups) $("#f-group").append(el("option", { value: g }, g));
  } else {
    $("#f-group").disabled = true;
  }
  for (const t of info.token_scopes) {
    const option = el("option", { value: t }, t);
    if (t === info.default_tokens) option.selected = true;
    $("#tokens").append(option);
  }
}

async function loadItems(append = false) {
  if (!append) state.offset = 0;
  const params = new URLSearchParams({
    label: $("#f-class").value, group: $("#f-group").value, correct: $("#f-correct").value,
    offset: state.offset, limit: 60,
  });
  const page = await api(`/api/items?${params}`);
  const grid = $("#grid");
  if (!append) grid.replaceChildren();
  for (const item of page.items) {
    grid.append(el("button", {
      type: "button", class: "thumb", title: `${item.id}: ${item.label} → ${item.predicted}`,
      dataset: { key: item.key, correct: String(item.correct), label: item.label, predicted: item.predicted },
      onclick: () => selectInstance(item.key),
    }, el("img", { src: `/api/image/${item.key}`, alt: item.id, loading: "lazy" }),
       el("span", {}, item.correct ? item.label : `${item.label}→${item.predicted}`)));
  }
  state.offset += page.items.length;
  $("#count").textContent = `${page.total} images match`;
  $("#more").hidden = state.offset >= page.total;
}

async function upload(file) {
  const form = new FormData();
  form.append("file", file);
  const inst = await api("/api/upload", { method: "POST", body: form });
  await selectInstance(inst.key);
}

// ---- one instance -----------------------------------------------------------------------------

async function selectInstance(key) {
  showMessage("");
  const inst = await api(`/api/instance/${key}`);
  state.key = key;
  state.instance = inst;
  state.edits.clear();
  state.saved = null;
  for (const b of document.querySelectorAll(".thumb")) b.classList.toggle("selected", b.dataset.key === key);
  $("#inspect").hidden = false;
  $("#patch").hidden = false;
  $("#inst-img").src = `/api/image/${key}`;
  $("#heat-figure").hidden = true;
  $("#inst-name").textContent = inst.id || `upload ${inst.sha256.slice(0, 12)}`;
  $("#inst-facts").textContent =
    `label: ${inst.label ?? "unknown"}` + (inst.group ? ` · group: ${inst.group}` : "");
  const against = inst.label && inst.label !== inst.prediction.predicted ? inst.label : "";
  $("#against").value = against;
  $("#suggest-label").value = against || state.info.classes.find((c) => c !== inst.prediction.predicted);
  $("#suggest-progress").hidden = true;
  $("#suggest-result").replaceChildren();
  for (const id of ["#tryon-result", "#save-result", "#validate-result", "#register-result"]) $(id).replaceChildren();
  $("#validate-btn").disabled = true;
  $("#register-btn").disabled = true;
  renderPrediction(inst.prediction, null);
  renderEdits();
  await loadAttribution();
}

function renderPrediction(before, after) {
  const body = $("#pred tbody");
  body.replaceChildren();
  const classes = before.top.map((t) => t.class);
  if (after) for (const t of after.top) if (!classes.includes(t.class)) classes.push(t.class);
  for (const c of classes) {
    const b = before.probs[c];
    const cells = [el("td", {}, c), el("td", { class: "bar" }, el("span", { style: `width:${100 * b}px` }), pct(b))];
    if (after) {
      const a = after.probs[c];
      cells.push(el("td", { class: "bar after" }, el("span", { style: `width:${100 * a}px` }), pct(a)));
    } else {
      cells.push(el("td", {}, "–"));
    }
    body.append(el("tr", { dataset: { class: c } }, ...cells));
  }
  const verdict = $("#verdict");
  const changed = Boolean(after && after.predicted !== before.predicted);
  verdict.dataset.changed = String(changed);
  verdict.dataset.after = after ? after.predicted : before.predicted;
  verdict.textContent = after
    ? `prediction: ${before.predicted} → ${after.predicted}` + (changed ? " (changed)" : " (unchanged)")
    : `prediction: ${before.predicted}`;
}

async function loadAttribution() {
  const key = state.key;
  const params = new URLSearchParams({ n: 8 });
  if ($("#against").value) params.set("target", $("#against").value);
  $("#latents tbody").replaceChildren(el("tr", {}, el("td", { colspan: 10 }, "attributing…")));
  const result = await api(`/api/attribution/${key}?${params}`);
  if (key !== state.key) return;
  state.latents = result.latents;
  state.scores = Object.fromEntries(result.latents.map((r) => [String(r.latent), r.score]));
  $("#att-predicted").textContent = result.predicted;
  renderLatents();
}

function latentRow(row) {
  const latent = row.latent;
  const edit = state.edits.get(latent);
  const scale = el("input", {
    type: "range", min: 0, max: 3, step: 0.05, value: edit && edit.op === "scale" ? edit.value : 1,
    class: "scale", "aria-label": `scale latent ${latent}`,
  });
  const scaleOut = el("output", {}, Number(scale.value).toFixed(2));
  const clamp = el("input", { type: "number", min: 0, step: 0.1, class: "clamp", placeholder: "–",
                              "aria-label": `clamp latent ${latent}` });
  const add = el("input", { type: "number", step: 0.1, class: "add", placeholder: "0",
                            "aria-label": `add to latent ${latent}` });
  if (edit && edit.op === "clamp") clamp.value = edit.value;
  if (edit && edit.op === "add") add.value = edit.value;
  const setEdit = (op, raw) => {
    // one edit per latent: the control touched last decides it, the others go back to neutral
    if (op !== "scale") { scale.value = 1; scaleOut.textContent = "1.00"; }
    if (op !== "clamp") clamp.value = "";
    if (op !== "add") add.value = "";
    const value = Number(raw);
    const neutral = raw === "" || (op === "scale" && value === 1) || (op === "add" && value === 0);
    if (neutral) state.edits.delete(latent);
    else state.edits.set(latent, { op, value: raw === "" ? NaN : value });
    tr.classList.toggle("edited", state.edits.has(latent));
    renderEdits();
    scheduleSteer();
  };
  scale.addEventListener("input", () => { scaleOut.textContent = Number(scale.value).toFixed(2); setEdit("scale", scale.value); });
  clamp.addEventListener("input", () => setEdit("clamp", clamp.value));
  add.addEventListener("input", () => setEdit("add", add.value));
  const heat = row.score === undefined ? "" : el("img", {
    class: "heat", src: `/api/heatmap/${state.key}/${latent}`, alt: `heatmap of latent ${latent}`,
    onclick: () => showHeatmap(latent),
  });
  const exemplars = el("div", { class: "exemplars" },
    ...(row.exemplars || []).map((x) => el("img", {
      src: `/api/image/${x.key}`, alt: x.id, title: `${x.id}: ${x.label}`, onclick: () => selectInstance(x.key),
    })));
  const exemplarCell = el("td", {}, exemplars);
  if (row.top_groups && row.top_groups.length) {
    exemplarCell.append(el("div", { class: "muted" },
      "fires on " + row.top_groups.slice(0, 2).map((g) => `${g.group} ×${g.lift.toFixed(1)}`).join(", ")));
  }
  const fmt = (v) => (v === undefined || v === null ? "–" : Number(v).toFixed(3));
  const tr = el("tr", { dataset: { latent: String(latent) } },
    el("td", {}, `#${latent}`), el("td", {}, fmt(row.score)), el("td", {}, fmt(row.activation)),
    el("td", { title: row.ablated_prediction ? `suppressed: predicts ${row.ablated_prediction}` : "" },
       fmt(row.ablation_effect) + (row.ablated_prediction ? ` → ${row.ablated_prediction}` : "")),
    el("td", {}, heat), exemplarCell,
    el("td", {}, scale, " ", scaleOut), el("td", {}, clamp), el("td", {}, add),
    el("td", {}, el("button", { type: "button", class: "suppress", onclick: () => {
      scale.value = 0; scaleOut.textContent = "0.00"; setEdit("scale", "0"); } }, "suppress"),
      el("button", { type: "button", class: "reset", onclick: () => setEdit("scale", "1") }, "reset")));
  tr.classList.toggle("edited", state.edits.has(latent));
  return tr;
}

function renderLatents() {
  const body = $("#latents tbody");
  body.replaceChildren(...state.latents.map(latentRow));
}

function showHeatmap(latent) {
  $("#heat-figure").hidden = false;
  $("#inst-heat").src = `/api/heatmap/${state.key}/${latent}`;
  $("#heat-caption").textContent = `latent #${latent} over the image`;
}

function editList() {
  return [...state.edits.entries()].map(([latent, e]) => ({ latent, op: e.op, value: e.value }));
}

function renderEdits() {
  const edits = editList();
  $("#edits-summary").textContent = edits.length
    ? edits.map((e) => `${e.latent}:${e.op}:${e.value}`).join("  ") : "none";
}

function scheduleSteer() {
  clearTimeout(state.steerTimer);
  state.steerTimer = setTimeout(steerNow, 30);
}

async function steerNow() {
  if (!state.key) return;
  const seq = ++state.steerSeq;
  const edits = editList();
  if (edits.some((e) => !Number.isFinite(e.value))) {
    showMessage("every edit needs a number; clear the field or type a value");
    return;
  }
  try {
    const result = await postJSON("/api/steer", { key: state.key, edits, tokens: $("#tokens").value });
    if (seq !== state.steerSeq) return;  // a newer move is on its way; drop this answer
    showMessage("");
    renderPrediction(result.before, edits.length ? result.after : null);
  } catch (_) { /* message already shown */ }
}

async function addLatent() {
  const raw = $("#add-latent").value;
  const latent = Number(raw);
  if (raw === "" || !Number.isInteger(latent)) { showMessage("type a latent index (a whole number)"); return; }
  if (state.latents.some((r) => r.latent === latent)) return;
  const result = await api(`/api/exemplars/${latent}`);
  state.latents.push({ latent, exemplars: result.exemplars });
  renderLatents();
  showMessage("");
}

// ---- suggest: a label-free search for a fix that generalises (steerpatch suggest, as a job) ---------

async function suggestFix() {
  const key = state.key;
  const button = $("#suggest-btn");
  const progress = $("#suggest-progress");
  button.disabled = true;
  $("#suggest-result").replaceChildren();
  progress.hidden = false;
  progress.textContent = "starting…";
  try {
    const budget = Math.round(Number($("#suggest-budget").value));
    // a third of the budget refines the best of the grid sweep greedily (the CLI's --refine)
    let job = await postJSON("/api/suggest", { key, label: $("#suggest-label").value, budget, refine: Math.floor(budget / 3) });
    while (job.state === "running") {
      await new Promise((resolve) => setTimeout(resolve, 500));
      job = await api(`/api/suggest/${job.job}`);
      progress.textContent = job.progress.join("\n") || "caching the pool…";
    }
    if (job.state === "failed") { showMessage(job.error); return; }
    if (key === state.key) renderSuggestion(job);
  } finally {
    button.disabled = false;
  }
}

function renderSuggestion(job) {
  const table = el("table", { id: "suggest-table" }, el("thead", {}, el("tr", {},
    ...["#", "edits", "image fixed", "look-alikes moved", "ripple", ""].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  job.candidates.forEach((c, i) => {
    const o = c.objective;
    body.append(el("tr", { dataset: { rank: String(i + 1) } },
      el("td", {}, i + 1), el("td", {}, c.edits), el("td", {}, pct(o.targets_fixed)),
      el("td", {}, pct(o.lookalikes_moved)), el("td", {}, pct(o.ripple)),
      el("td", {}, el("button", { type: "button", class: "use", onclick: () => useCandidate(c, job) }, "load into edits"))));
  });
  table.append(body);
  $("#suggest-result").replaceChildren(table,
    el("p", { class: "muted" }, `patches and search trace in `, el("code", {}, job.out)),
    el("img", { id: "suggest-plot", src: job.plot_url, alt: "fix against ripple of the candidates" }));
}

function useCandidate(candidate, job) {
  state.edits.clear();
  for (const e of candidate.edit_list) {
    state.edits.set(e.latent, { op: e.op, value: e.value });
    if (!state.latents.some((r) => r.latent === e.latent)) state.latents.push({ latent: e.latent });
  }
  if (!$("#patch-rationale").value) {
    $("#patch-rationale").value = `suggested: ${candidate.edits} latents that push look-alikes of this image ` +
      `toward ${job.label} (steerpatch suggest, ${job.out})`;
  }
  renderLatents();
  renderEdits();
  scheduleSteer();
}

// ---- beyond the instance: try-on, save, validate, register ---------------------------------------

async function tryOn() {
  const out = $("#tryon-result");
  out.replaceChildren("running…");
  const result = await postJSON("/api/tryon", { key: state.key, edits: editList(), tokens: $("#tokens").value });
  const table = el("table", { id: "tryon-table" },
    el("thead", {}, el("tr", {}, ...["set", "n", "right→wrong", "wrong→right", "accuracy before → after"].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  const describe = { near: `nearest of ${result.label}` + (result.group ? ` / ${result.group}` : ""), other: "other classes" };
  for (const name of ["near", "other"]) {
    const s = result[name];
    const acc = s.n ? `${pct(s.accuracy_before)} → ${pct(s.accuracy_after)}` : "–";
    body.append(el("tr", { dataset: { set: name } }, el("td", {}, describe[name]), el("td", {}, s.n),
      el("td", { class: "r2w" }, s.right_to_wrong), el("td", { class: "w2r" }, s.wrong_to_right), el("td", {}, acc)));
  }
  table.append(body);
  const flipped = [...result.near.rows, ...result.other.rows].filter((r) => r.before !== r.after);
  const strip = el("div", { class: "tryon" }, ...flipped.map((r) => el("figure", {},
    el("img", { src: `/api/image/${r.key}`, alt: r.key, onclick: () => selectInstance(r.key) }),
    el("figcaption", {}, `${r.before}→${r.after}`))));
  out.replaceChildren(table, flipped.length ? el("p", {}, "Images whose predicted class changes (before→after):") : "", strip);
}

async function savePatch(event) {
  event.preventDefault();
  const name = $("#patch-name").value.trim();
  const result = await postJSON("/api/patches", {
    key: state.key, edits: editList(), tokens: $("#tokens").value, name,
    rationale: $("#patch-rationale").value, author: $("#patch-author").value || null, scores: state.scores,
  });
  state.saved = result.name;
  $("#save-result").replaceChildren(el("p", { id: "saved-path" }, `saved ${result.ref} to `, el("code", {}, result.path)));
  $("#validate-btn").disabled = false;
  showMessage(`patch ${result.ref} saved`, true);
}

async function validatePatch() {
  const out = $("#validate-result");
  out.replaceChildren("validating…");
  const r = await api(`/api/patches/${encodeURIComponent(state.saved)}/validate`, { method: "POST" });
  const gates = r.failed_gates.length ? ` (failed: ${r.failed_gates.join(", ")})` : "";
  out.replaceChildren(
    el("p", {}, "verdict: ", el("span", { id: "verdict-value", class: r.verdict }, r.verdict), gates),
    el("p", {}, `accuracy ${pct(r.accuracy.before)} → ${pct(r.accuracy.after)} · flips right→wrong ` +
      `${r.flips.right_to_wrong}, wrong→right ${r.flips.wrong_to_right}` +
      (r.worst_group ? ` · worst group ${r.worst_group.name} ${pct(r.worst_group.before)} → ${pct(r.worst_group.after)}` : "")),
    el("p", {}, el("a", { id: "report-link", href: r.report_url, target: "_blank" }, "open the ripple report")));
  $("#register-btn").disabled = false;
}

async function registerPatch() {
  const out = $("#register-result");
  out.replaceChildren("registering…");
  const r = await api(`/api/patches/${encodeURIComponent(state.saved)}/register`, { method: "POST" });
  out.replaceChildren(el("p", { id: "registered" }, `registered ${r.name} version ${r.version} (${r.model_uri})`));
}

// errors of any action are shown in the message box by api(); keep them out of the console
const guard = (fn) => (...args) => fn(...args).catch(() => {});

window.addEventListener("DOMContentLoaded", guard(async () => {
  for (const id of ["#f-class", "#f-group", "#f-correct"]) $(id).addEventListener("change", guard(() => loadItems()));
  $("#more").addEventListener("click", guard(() => loadItems(true)));
  $("#upload").addEventListener("change", guard(async (e) => { if (e.target.files[0]) await upload(e.target.files[0]); }));
  $("#against").addEventListener("change", guard(loadAttribution));
  $("#tokens").addEventListener("change", scheduleSteer);
  $("#add-latent-btn").addEventListener("click", guard(addLatent));
  $("#clear-edits").addEventListener("click", () => { state.edits.clear(); renderLatents(); renderEdits(); scheduleSteer(); });
  $("#suggest-btn").addEventListener("click", guard(suggestFix));
  $("#tryon-btn").addEventListener("click", guard(tryOn));
  $("#save-form").addEventListener("submit", guard(savePatch));
  $("#validate-btn").addEventListener("click", guard(validatePatch));
  $("#register-btn").addEventListener("click", guard(registerPatch));
  await loadInfo();
  await loadItems();
  document.body.dataset.ready = "true";
}));
