/* lossreg explorer: the catalog, and any loss's value and gradient curves computed by this
   server (POST v1/losses/{name}/sweep). Plain browser JavaScript, no build step; uPlot draws.
   Every number plotted is the server's; the page keeps them in #plots[data-curves] and in the
   table view so that tests (and people) can read them back. */
"use strict";

const COLORS = ["#2f6fd6", "#d6492f", "#2a9d5c", "#8e44ad", "#e08e0b", "#16a3b8", "#7f8c8d", "#c2185b"];
const KEY_STORE = "lossreg-api-key";
const state = {
  losses: [],          // available specs from the server
  spec: null,          // the loss shown in the card
  curves: [],          // {label, loss, params, scenario, inputs, sweep, x, loss, grad, color}
  cursor: null,        // index of the point under the cursor (last hovered)
  plots: [],
  keyRequired: false,
};
const $ = (id) => document.getElementById(id);

/* ---------- the server ---------------------------------------------------------------------- */

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(path, body) {
  const headers = { "Accept": "application/json" };
  if (apiKey()) headers["Authorization"] = "Bearer " + apiKey();
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let parsed = null;
  try { parsed = await response.json(); } catch (e) { parsed = null; }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

/* Every API call goes through here: a 401 asks for the key once, then retries. */
async function call(path, body) {
  try {
    return await api(path, body);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      await askForKey(apiKey() ? "The API key was refused by the server." : "This server needs an API key.");
      return call(path, body);
    }
    throw err;
  }
}

let keyWaiters = [];
function askForKey(reason) {
  state.keyRequired = true;
  $("key-reason").textContent = reason + " Enter one of the keys in its LOSSREG_API_KEYS.";
  $("key-form").hidden = false;
  showMessage("This server requires an API key: nothing can be shown until you enter one below.");
  $("api-key").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function onKeySubmit(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("key-form").hidden = true;
  hideMessage();
  const waiting = keyWaiters;
  keyWaiters = [];
  waiting.forEach((resolve) => resolve());
}

function showMessage(text) { $("message").textContent = text; $("message").hidden = false; }
function hideMessage() { $("message").hidden = true; $("message").textContent = ""; }
function errorText(err) {
  const field = err.body && err.body.field ? ` (field: ${err.body.field})` : "";
  return err.message + field;
}

/* ---------- the catalog ---------------------------------------------------------------------- */

let filterTimer = null;
let catalogSeq = 0;
async function loadCatalog() {
  clearTimeout(filterTimer);
  const seq = ++catalogSeq;  // answers may arrive out of order: only the latest query is shown
  const query = new URLSearchParams();
  const pattern = $("filter-name").value.trim();
  if (pattern) query.append("pattern", pattern.includes("*") || pattern.includes("?") ? pattern : `*${pattern}*`);
  const tag = $("filter-tag").value;
  if (tag) query.append("tag", tag);
  let listing;
  try {
    listing = await call("v1/losses" + (query.toString() ? "?" + query : ""));
  } catch (err) {
    showMessage("Could not load the catalog: " + errorText(err));
    return;
  }
  if (seq !== catalogSeq) return;
  const available = listing.losses.filter((s) => s.available);
  const unavailable = listing.losses.filter((s) => !s.available);
  if (!pattern && !tag) {
    state.losses = available;
    fillTags(available);
  }
  renderList(available, unavailable);
  $("loss-list").dataset.query = query.toString();
}

function fillTags(specs) {
  const select = $("filter-tag");
  const current = select.value;
  const tags = [...new Set(specs.flatMap((s) => s.tags))].sort();
  select.replaceChildren(new Option("any", ""), ...tags.map((t) => new Option(t, t)));
  select.value = current;
}

function renderList(available, unavailable) {
  const list = $("loss-list");
  list.replaceChildren(...available.map((spec) => {
    const li = document.createElement("li");
    li.dataset.name = spec.name;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", state.spec && state.spec.name === spec.name ? "true" : "false");
    const name = document.createElement("b");
    name.textContent = spec.name;
    const summary = document.createElement("small");
    summary.textContent = spec.summary;
    li.append(name, summary);
    li.addEventListener("click", () => selectLoss(spec.name));
    return li;
  }));
  $("catalog-count").textContent = `${available.length} loss${available.length === 1 ? "" : "es"}`;
  const details = $("unavailable");
  details.hidden = unavailable.length === 0;
  $("unavailable-list").replaceChildren(...unavailable.map((spec) => {
    const li = document.createElement("li");
    li.dataset.name = spec.name;
    li.textContent = `${spec.name} (${spec.distribution || "?"} ${spec.version || ""}): ${spec.error}`;
    return li;
  }));
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function table(headers, rows) {
  const t = el("table");
  const head = t.createTHead().insertRow();
  headers.forEach((h) => head.append(el("th", h)));
  const body = t.createTBody();
  rows.forEach((row) => {
    const tr = body.insertRow();
    row.forEach((cell) => tr.append(el("td", cell)));
  });
  return t;
}

function describeSchema(prop) {
  const s = nonNull(prop);
  if (s.enum) return s.enum.join(" | ");
  const range = [];
  if (s.minimum !== undefined) range.push(`≥ ${s.minimum}`);
  if (s.exclusiveMinimum !== undefined) range.push(`> ${s.exclusiveMinimum}`);
  if (s.maximum !== undefined) range.push(`≤ ${s.maximum}`);
  if (s.exclusiveMaximum !== undefined) range.push(`< ${s.exclusiveMaximum}`);
  return (s.type || "any") + (range.length ? " " + range.join(", ") : "") + (isNullable(prop) ? " or null" : "");
}

function renderCard(spec) {
  const card = $("card");
  card.replaceChildren();
  card.dataset.name = spec.name;
  card.append(el("h2", spec.name), el("p", spec.summary));
  const tags = el("p");
  spec.tags.forEach((t) => tags.append(el("span", t, "tag")));
  card.append(tags);
  const origin = el("p", `from ${spec.distribution || "?"} ${spec.version || ""} · ${spec.entry_point} · ${spec.style}`);
  origin.className = "origin";
  card.append(origin);
  card.append(el("h3", "Inputs"), table(
    ["name", "dtypes", "shape", "differentiable", "optional"],
    spec.inputs.concat(spec.tensor_params).map((t) => [
      t.name, t.dtypes.join(", "), t.shape || "any", t.differentiable ? "yes" : "no", t.optional ? "yes" : "no",
    ]),
  ));
  const props = spec.params_schema.properties || {};
  if (Object.keys(props).length) {
    card.append(el("h3", "Parameters"), table(
      ["name", "type", "default", "description"],
      Object.entries(props).map(([name, p]) => [
        name, describeSchema(p), JSON.stringify(p.default === undefined ? null : p.default), p.description || "",
      ]),
    ));
  }
  const doc = el("details");
  doc.append(el("summary", "Documentation"), el("pre", spec.doc || spec.summary));
  card.append(doc);
  card.hidden = false;
}

/* ---------- parameter controls from the JSON schema ------------------------------------------ */

function resolveRef(prop, schema) {
  if (prop && prop.$ref && schema && schema.$defs) {
    const name = prop.$ref.split("/").pop();
    return { ...schema.$defs[name], ...prop, $ref: undefined };
  }
  return prop;
}
function isNullable(prop) { return (prop.anyOf || []).some((p) => p.type === "null") || prop.type === "null"; }
function nonNull(prop) {
  if (prop.anyOf) {
    const other = prop.anyOf.find((p) => p.type !== "null");
    return { ...prop, ...other, anyOf: undefined };
  }
  return prop;
}

function renderParams(spec) {
  const box = $("params");
  box.replaceChildren(el("legend", "Parameters"));
  const compare = $("compare-param");
  compare.replaceChildren(new Option("(one curve)", ""));
  const schema = spec.params_schema;
  Object.entries(schema.properties || {}).forEach(([name, raw]) => {
    const prop = resolveRef(raw, schema);
    const inner = nonNull(prop);
    const label = el("label", name + " ");
    let input;
    if (inner.enum) {
      input = document.createElement("select");
      inner.enum.forEach((v) => input.append(new Option(String(v), JSON.stringify(v))));
      if (prop.default !== undefined && prop.default !== null) input.value = JSON.stringify(prop.default);
      input.dataset.kind = "enum";
    } else if (inner.type === "boolean") {
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = prop.default === true;
      input.dataset.kind = "boolean";
    } else if (inner.type === "number" || inner.type === "integer") {
      input = document.createElement("input");
      input.type = "number";
      input.step = inner.type === "integer" ? "1" : "any";
      const lo = inner.minimum ?? inner.exclusiveMinimum;
      const hi = inner.maximum ?? inner.exclusiveMaximum;
      if (lo !== undefined) input.min = lo;
      if (hi !== undefined) input.max = hi;
      if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
      input.dataset.kind = inner.type;
      compare.append(new Option(name, name));
    } else {
      input = document.createElement("input");
      input.placeholder = "JSON";
      if (prop.default !== undefined && prop.default !== null) input.value = JSON.stringify(prop.default);
      input.dataset.kind = "json";
    }
    input.name = name;
    input.id = "param-" + name;
    input.dataset.param = name;
    label.append(input);
    if (isNullable(prop)) {
      const none = document.createElement("input");
      none.type = "checkbox";
      none.id = "param-" + name + "-null";
      none.dataset.nullFor = name;
      none.checked = prop.default === null || prop.default === undefined;
      input.disabled = none.checked;
      none.addEventListener("change", () => { input.disabled = none.checked; });
      const noneLabel = el("label", "none ");
      noneLabel.className = "null";
      noneLabel.prepend(none);
      label.append(" ", noneLabel);
    }
    label.title = describeSchema(prop);
    box.append(label);
  });
}

/* The parameters set in the controls that differ from the defaults (the request stays short). */
function readParams(spec) {
  const params = {};
  const schema = spec.params_schema;
  Object.entries(schema.properties || {}).forEach(([name, raw]) => {
    const prop = resolveRef(raw, schema);
    const input = $("param-" + name);
    const none = $("param-" + name + "-null");
    let value;
    if (none && none.checked) value = null;
    else if (input.dataset.kind === "enum") value = JSON.parse(input.value);
    else if (input.dataset.kind === "boolean") value = input.checked;
    else if (input.dataset.kind === "number" || input.dataset.kind === "integer") {
      if (input.value === "") return;
      value = Number(input.value);
    } else {
      if (input.value.trim() === "") return;
      try { value = JSON.parse(input.value); } catch (e) { value = input.value; }
    }
    if (JSON.stringify(value) !== JSON.stringify(prop.default === undefined ? null : prop.default)
        || (prop.default === undefined && value !== null)) {
      params[name] = value;
    }
  });
  return params;
}

function setParam(name, value) {
  const input = $("param-" + name);
  if (!input) return;
  const none = $("param-" + name + "-null");
  if (none) { none.checked = value === null; input.disabled = none.checked; }
  if (value === null) return;
  if (input.dataset.kind === "enum") input.value = JSON.stringify(value);
  else if (input.dataset.kind === "boolean") input.checked = !!value;
  else input.value = typeof value === "string" ? value : JSON.stringify(value);
}

/* ---------- scenarios: inputs that fit the loss, and which element moves ---------------------- */

const floatOnly = (t) => t.dtypes.every((d) => d.startsWith("float") || d === "bfloat16");
const takesInt = (t) => t.dtypes.includes("int64");
const names = (spec) => spec.inputs.map((t) => t.name);
const hasParam = (spec, p) => Object.prototype.hasOwnProperty.call(spec.params_schema.properties || {}, p);
const allowsMode = (spec, mode) => {
  const p = (spec.params_schema.properties || {}).mode;
  return p && (resolveRef(p, spec.params_schema).enum || []).includes(mode);
};
const num = (v, d) => (Number.isFinite(Number(v)) && v !== "" ? Number(v) : d);

/* Each scenario: when it fits, its own controls, the inputs and the swept element it builds. */
const SCENARIOS = [
  {
    id: "classification",
    label: "classification: one logit swept, target class fixed",
    // Logits "N C ..." (or "*B C": batch optional) against class indices; a loss that also
    // takes unbatched logits (torch's cross_entropy, nll_loss) declares no shape and says
    // "classification" in its tags.
    fits: (s) => s.inputs.length === 2 && takesInt(s.inputs[1])
      && (/^\*?(N|B) C/.test(s.inputs[0].shape || "") || (!s.inputs[0].shape && s.tags.includes("classification")))
      && (!hasParam(s, "mode") || allowsMode(s, "multiclass")),
    controls: [["classes", 3], ["target class", 0], ["swept class", 0], ["other logits", 0]],
    range: [-6, 6],
    params: (s) => (allowsMode(s, "multiclass") ? { mode: "multiclass" } : {}),
    build(s, c) {
      const classes = Math.max(2, Math.round(num(c["classes"], 3)));
      const k = Math.min(classes - 1, Math.max(0, Math.round(num(c["swept class"], 0))));
      const target = Math.min(classes - 1, Math.max(0, Math.round(num(c["target class"], 0))));
      const logits = Array.from({ length: classes }, () => num(c["other logits"], 0));
      const [x, y] = names(s);
      return { inputs: { [x]: { dtype: "float32", shape: [1, classes], data: logits }, [y]: { dtype: "int64", shape: [1], data: [target] } },
               sweep: { input: x, index: [0, k] } };
    },
  },
  {
    id: "probability",
    label: "binary: a probability (or logit) swept, target fixed",
    fits: (s) => /binary_cross_entropy|soft_margin/.test(s.name) && s.inputs.length === 2,
    controls: [["target", 1]],
    range: (s) => (s.name === "binary_cross_entropy" ? [0, 1] : [-6, 6]),
    build(s, c) {
      const [x, y] = names(s);
      const p = s.name === "binary_cross_entropy" ? 0.5 : 0;
      return { inputs: { [x]: { dtype: "float32", shape: [1], data: [p] }, [y]: { dtype: "float32", shape: [1], data: [num(c["target"], 1)] } },
               sweep: { input: x, index: [0] } };
    },
  },
  {
    id: "segmentation",
    label: "segmentation: one pixel's logit swept in a 2x2 map",
    fits: (s) => s.tags.includes("segmentation") && /^B C/.test(s.inputs[0].shape || "") && s.inputs.length === 2,
    controls: [["pixel target", 1]],
    range: [-6, 6],
    params: (s) => (allowsMode(s, "binary") ? { mode: "binary" } : {}),
    build(s, c) {
      const [x, y] = names(s);
      const t = num(c["pixel target"], 1) ? 1 : 0;
      if (!hasParam(s, "mode") || !allowsMode(s, "binary")) {  // multiclass only: two classes
        return { inputs: { [x]: { dtype: "float32", shape: [1, 2, 2, 2], data: [-2, 1, 2, -1, 2, -1, -2, 0] },
                           [y]: { dtype: "int64", shape: [1, 2, 2], data: [1, 0, 0, t] } },
                 sweep: { input: x, index: [0, 1, 1, 1] } };
      }
      return { inputs: { [x]: { dtype: "float32", shape: [1, 1, 2, 2], data: [2, -1, -2, 0] },
                         [y]: { dtype: "float32", shape: [1, 1, 2, 2], data: [1, 0, 0, t] } },
               sweep: { input: x, index: [0, 0, 1, 1] } };
    },
  },
  {
    id: "pair",
    label: "pair: the first input swept, the second and the label fixed",
    fits: (s) => s.tags.includes("metric-learning") && s.inputs.length <= 3 && s.inputs[s.inputs.length - 1].name === "target",
    controls: [["other", 0.5], ["label (+1/-1)", 1]],
    range: [-3, 3],
    build(s, c) {
      const label = num(c["label (+1/-1)"], 1) >= 0 ? 1 : -1;
      const other = num(c["other"], 0.5);
      const n = names(s);
      if (s.inputs.length === 2) {  // hinge_embedding_loss: a distance and a label
        return { inputs: { [n[0]]: { dtype: "float32", shape: [1], data: [other] }, [n[1]]: { dtype: "float32", shape: [1], data: [label] } },
                 sweep: { input: n[0], index: [0] } };
      }
      const vector = /D/.test(s.inputs[0].shape || "");
      const shape = vector ? [1, 2] : [1];
      return { inputs: { [n[0]]: { dtype: "float32", shape, data: vector ? [0, 1] : [0] },
                         [n[1]]: { dtype: "float32", shape, data: vector ? [1, other] : [other] },
                         [n[2]]: { dtype: "float32", shape: [1], data: [label] } },
               sweep: { input: n[0], index: vector ? [0, 0] : [0] } };
    },
  },
  {
    id: "triplet",
    label: "triplet: the negative moves along a line, anchor at 0",
    fits: (s) => s.inputs.length === 3 && s.inputs.every((t) => floatOnly(t) && /D/.test(t.shape || "")),
    controls: [["positive", 0.5]],
    range: [-3, 3],
    build(s, c) {
      const [a, p, n] = names(s);
      return { inputs: { [a]: { dtype: "float32", shape: [1, 2], data: [0, 0] },
                         [p]: { dtype: "float32", shape: [1, 2], data: [num(c["positive"], 0.5), 0] },
                         [n]: { dtype: "float32", shape: [1, 2], data: [1, 0] } },
               sweep: { input: n, index: [0, 0] } };
    },
  },
  {
    id: "regression",
    label: "regression: the prediction swept around a target",
    fits: (s) => s.inputs.length >= 2 && s.name !== "binary_cross_entropy"  // probabilities only
      && s.inputs.every((t) => t.dtypes.includes("float32") && !/C|D/.test(t.shape || "")),
    controls: [["target", 0], ["other inputs", 1]],
    range: (s, c) => [num(c && c["target"], 0) - 3, num(c && c["target"], 0) + 3],
    build(s, c) {
      const n = names(s);
      const inputs = { [n[0]]: { dtype: "float32", shape: [1], data: [0] }, [n[1]]: { dtype: "float32", shape: [1], data: [num(c["target"], 0)] } };
      n.slice(2).forEach((m) => { inputs[m] = { dtype: "float32", shape: [1], data: [num(c["other inputs"], 1)] }; });
      return { inputs, sweep: { input: n[0], index: [0] } };
    },
  },
  {
    id: "sequence",
    label: "sequence (CTC): one log-probability swept, 2 frames, 3 symbols",
    fits: (s) => names(s).join(",") === "log_probs,targets,input_lengths,target_lengths",
    controls: [["target symbol", 1]],
    range: [-6, 0],
    build(s, c) {
      const symbol = Math.min(2, Math.max(1, Math.round(num(c["target symbol"], 1))));
      const logp = Math.log(1 / 3);
      return { inputs: { log_probs: { dtype: "float32", shape: [2, 1, 3], data: Array(6).fill(logp) },
                         targets: { dtype: "int64", shape: [1, 1], data: [symbol] },
                         input_lengths: { dtype: "int64", shape: [1], data: [2] },
                         target_lengths: { dtype: "int64", shape: [1], data: [1] } },
               sweep: { input: "log_probs", index: [0, 0, symbol] } };
    },
  },
  {
    id: "generic",
    label: "generic: the first differentiable input's first element",
    fits: (s) => SCENARIOS.every((sc) => sc.id === "generic" || !sc.fits(s)),  // the fallback
    controls: [["other values", 0.5]],
    range: [-3, 3],
    build(s, c) {
      const inputs = {};
      s.inputs.filter((t) => !t.optional).forEach((t) => {
        inputs[t.name] = floatOnly(t) || !takesInt(t)
          ? { dtype: t.dtypes.includes("float32") ? "float32" : t.dtypes[0], shape: [1], data: [num(c["other values"], 0.5)] }
          : { dtype: "int64", shape: [1], data: [0] };
      });
      const swept = s.inputs.find((t) => t.differentiable) || s.inputs[0];
      return { inputs, sweep: { input: swept.name, index: [0] } };
    },
  },
];

/* The fitting scenarios, the most telling first: a pixel for segmentation-only losses. */
function scenariosFor(spec) {
  const fitting = SCENARIOS.filter((sc) => sc.fits(spec));
  if (spec.tags.includes("segmentation") && !spec.tags.includes("classification")) {
    fitting.sort((a, b) => (b.id === "segmentation") - (a.id === "segmentation"));
  }
  return fitting;
}
function currentScenario() { return SCENARIOS.find((sc) => sc.id === $("scenario").value); }

function scenarioValues() {
  const values = {};
  document.querySelectorAll("#scenario-controls input").forEach((i) => { values[i.dataset.control] = i.value; });
  return values;
}

function renderScenarioControls(sc) {
  const old = scenarioValues();
  $("scenario-controls").replaceChildren(...sc.controls.map(([name, dflt]) => {
    const label = el("label", name + " ");
    const input = document.createElement("input");
    input.type = "number";
    input.step = "any";
    input.dataset.control = name;
    input.id = "scenario-" + name.replace(/[^a-z]+/g, "-");
    input.value = old[name] !== undefined ? old[name] : dflt;
    label.append(input);
    return label;
  }));
}

function applyScenario(sc, spec, keepRange) {
  renderScenarioControls(sc);
  if (sc.params) Object.entries(sc.params(spec)).forEach(([k, v]) => setParam(k, v));
  if (!keepRange) {
    const range = typeof sc.range === "function" ? sc.range(spec, scenarioValues()) : sc.range;
    $("x-start").value = range[0];
    $("x-stop").value = range[1];
  }
}

function renderScenarios(spec) {
  const select = $("scenario");
  const previous = select.value;
  const fitting = scenariosFor(spec);
  select.replaceChildren(...fitting.map((sc) => new Option(sc.label, sc.id)));
  const keep = fitting.some((sc) => sc.id === previous);
  select.value = keep ? previous : fitting[0].id;
  applyScenario(currentScenario(), spec, keep && $("x-start").value !== "");
}

/* ---------- choosing a loss ------------------------------------------------------------------- */

async function selectLoss(name) {
  let spec;
  try {
    spec = await call("v1/losses/" + encodeURIComponent(name));
  } catch (err) {
    showMessage(`Could not load ${name}: ` + errorText(err));
    return;
  }
  state.spec = spec;
  document.querySelectorAll("#loss-list li").forEach((li) => {
    li.setAttribute("aria-selected", li.dataset.name === name ? "true" : "false");
  });
  renderCard(spec);
  renderParams(spec);
  renderScenarios(spec);
  $("plot-panel").hidden = false;
  hideMessage();
}

/* ---------- curves ---------------------------------------------------------------------------- */

function describeParams(params) {
  return Object.entries(params).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
}

function grid() {
  const start = Number($("x-start").value);
  const stop = Number($("x-stop").value);
  const points = Math.round(Number($("x-points").value));
  return { start, stop, points };
}

async function sweepCurve(def) {
  const { start, stop, points } = grid();
  const used = JSON.stringify({ start, stop, points });
  const body = {
    inputs: def.inputs,
    params: def.params,
    sweep: { ...def.sweep, start, stop, points },
    nonfinite: "allow",
  };
  const out = await call("v1/losses/" + encodeURIComponent(def.loss) + "/sweep", body);
  return { ...def, grid: used, x: out.x, value: out.loss, grad: out.grad, nonfinite: out.nonfinite };
}

async function addCurves() {
  const spec = state.spec;
  if (!spec) return;
  const sc = currentScenario();
  const built = sc.build(spec, scenarioValues());
  const base = readParams(spec);
  const param = $("compare-param").value;
  const values = $("compare-values").value.split(",").map((v) => v.trim()).filter((v) => v !== "").map(Number);
  const variants = param && values.length ? values.map((v) => ({ ...base, [param]: v })) : [base];
  const button = $("add-curve");
  button.disabled = true;
  try {
    if (state.curves.some((c) => c.grid !== JSON.stringify(grid()))) await refreshCurves();  // one x axis
    for (const params of variants) {
      const label = spec.name + (Object.keys(params).length ? ` (${describeParams(params)})` : "");
      const def = { label, loss: spec.name, params, scenario: sc.id, inputs: built.inputs, sweep: built.sweep };
      const curve = await sweepCurve(def);
      curve.color = COLORS[state.curves.length % COLORS.length];
      state.curves = state.curves.concat([curve]);  // a new array: see refreshCurves
    }
    hideMessage();
  } catch (err) {
    showMessage(`Could not compute ${spec.name}: ` + errorText(err));
  } finally {
    button.disabled = false;
    renderCurves();
  }
}

async function refreshCurves() {
  if (!state.curves.length) return;
  const before = state.curves;
  try {
    const fresh = await Promise.all(before.map((c) => sweepCurve(c).then((n) => ({ ...n, color: c.color }))));
    if (state.curves !== before) return;  // curves were added or removed meanwhile: theirs stands
    state.curves = fresh;
    hideMessage();
  } catch (err) {
    showMessage("Could not recompute the curves: " + errorText(err));
  }
  renderCurves();
}

/* Bands where a curve's value or gradient is NaN/Inf: shaded, never joined by a line. */
function nonfiniteBands(curves, key) {
  const bands = [];
  curves.forEach((c) => {
    const ys = c[key] || [];
    c.x.forEach((x, i) => {
      if (ys[i] === null) {
        const lo = i > 0 ? (c.x[i - 1] + x) / 2 : x;
        const hi = i < c.x.length - 1 ? (c.x[i + 1] + x) / 2 : x;
        bands.push([lo, hi]);
      }
    });
  });
  return bands;
}

function bandPlugin(key) {
  return {
    hooks: {
      drawClear: [(u) => {
        const ctx = u.ctx;
        ctx.save();
        ctx.fillStyle = "rgba(192, 57, 43, 0.18)";
        nonfiniteBands(state.curves, key).forEach(([lo, hi]) => {
          const left = u.valToPos(lo, "x", true);
          const right = u.valToPos(hi, "x", true);
          ctx.fillRect(left, u.bbox.top, Math.max(2, right - left), u.bbox.height);
        });
        ctx.restore();
      }],
    },
  };
}

function renderCurves() {
  state.plots.forEach((p) => p.destroy());
  state.plots = [];
  const section = $("plots");
  section.dataset.curves = JSON.stringify(state.curves.map((c) => ({
    label: c.label, loss: c.loss, params: c.params, scenario: c.scenario, inputs: c.inputs,
    sweep: c.sweep, x: c.x, value: c.value, grad: c.grad, nonfinite: c.nonfinite,
  })));
  section.hidden = state.curves.length === 0;
  if (!state.curves.length) {
    $("curve-list").replaceChildren();
    $("table-view").replaceChildren();
    return;
  }
  const x = state.curves[0].x;
  const width = Math.max(480, section.clientWidth - 20);
  const sync = uPlot.sync("lossreg");
  ["value", "grad"].forEach((key) => {
    const opts = {
      title: key === "value" ? "loss" : "gradient of the loss with respect to the swept element",
      width,
      height: 260,
      cursor: { sync: { key: sync.key }, points: { size: 6 } },
      scales: { x: { time: false } },
      axes: [{ label: "swept value" }, { label: key === "value" ? "loss" : "d loss / dx" }],
      series: [{ label: "x" }].concat(state.curves.map((c) => ({
        label: c.label, stroke: c.color, width: 2, spanGaps: false,
      }))),
      plugins: [bandPlugin(key)],
      hooks: { setCursor: [(u) => { if (u.cursor.idx !== null && u.cursor.idx !== undefined) setCursor(u.cursor.idx); }] },
    };
    const data = [x].concat(state.curves.map((c) => c[key] || x.map(() => null)));
    const target = $(key === "value" ? "plot-value" : "plot-grad");
    target.replaceChildren();
    state.plots.push(new uPlot(opts, data, target));
  });
  renderCurveList();
  renderNonfiniteNote();
  renderTable();
  if (state.cursor === null || state.cursor >= x.length) setCursor(Math.floor(x.length / 2));
  else setCursor(state.cursor);
}

function renderNonfiniteNote() {
  const notes = state.curves.filter((c) => c.nonfinite && c.nonfinite.length).map((c) => {
    const xs = c.x.filter((_, i) => c.value[i] === null || (c.grad && c.grad[i] === null));
    return `${c.label}: ${c.nonfinite.join(" and ")} non-finite at ${xs.length} point(s), x in [${Math.min(...xs)}, ${Math.max(...xs)}] (shaded)`;
  });
  $("nonfinite-note").textContent = notes.join("; ");
}

function renderCurveList() {
  $("curve-list").replaceChildren(...state.curves.map((c, i) => {
    const li = el("li");
    li.dataset.index = i;
    const swatch = el("span", "", "swatch");
    swatch.style.background = c.color;
    const curl = el("button", "copy as curl");
    curl.type = "button";
    curl.className = "copy-curl";
    curl.addEventListener("click", () => copySnippet(i, "curl"));
    const py = el("button", "copy as Python");
    py.type = "button";
    py.className = "copy-python";
    py.addEventListener("click", () => copySnippet(i, "python"));
    const remove = el("button", "remove");
    remove.type = "button";
    remove.addEventListener("click", () => { state.curves = state.curves.filter((_, j) => j !== i); renderCurves(); });
    li.append(swatch, el("span", c.label), curl, py, remove);
    return li;
  }));
}

function fmt(v) { return v === null || v === undefined ? "non-finite" : String(v); }

function renderTable() {
  const view = $("table-view");
  view.hidden = !$("table-toggle").checked;
  const curves = state.curves;
  const headers = ["x"].concat(curves.flatMap((c) => [`${c.label}: loss`, `${c.label}: grad`]));
  const rows = curves[0].x.map((x, i) => [String(x)].concat(curves.flatMap((c) => [fmt(c.value[i]), fmt(c.grad ? c.grad[i] : null)])));
  const t = table(headers, rows);
  t.id = "curve-table";
  view.replaceChildren(t);
}

function setCursor(idx) {
  state.cursor = idx;
  const x = state.curves.length ? state.curves[0].x[idx] : null;
  const point = $("cursor-point");
  point.dataset.idx = idx;
  point.dataset.x = x;
  point.textContent = `x = ${x} · ` + state.curves.map((c) => `${c.label}: loss ${fmt(c.value[idx])}, grad ${fmt(c.grad ? c.grad[idx] : null)}`).join(" · ");
}

/* ---------- copy as curl / Python for the point under the cursor ----------------------------- */

function pointInputs(curve, idx) {
  const inputs = JSON.parse(JSON.stringify(curve.inputs));
  const t = inputs[curve.sweep.input];
  let flat = 0;
  curve.sweep.index.forEach((i, d) => { flat = flat * t.shape[d] + i; });
  t.data[flat] = curve.x[idx];
  return inputs;
}

function serverUrl() { return window.location.origin; }

function shellQuote(text) { return "'" + text.replace(/'/g, "'\\''") + "'"; }

function nonfiniteAt(curve, idx) {
  return curve.value[idx] === null || (curve.grad !== null && curve.grad[idx] === null);
}

function curlSnippet(curve, idx) {
  // typed tensors: a whole number stays float32 (nested lists would read -3 as int64)
  const body = { inputs: pointInputs(curve, idx), params: curve.params, grad: [curve.sweep.input] };
  if (nonfiniteAt(curve, idx)) body.nonfinite = "allow";  // else the server's default refuses it
  const lines = [];
  if (state.keyRequired || apiKey()) lines.push("# export LOSSREG_API_KEY=<your key> first");
  lines.push(`curl -s ${serverUrl()}/v1/losses/${encodeURIComponent(curve.loss)}/evaluate \\`);
  if (state.keyRequired || apiKey()) lines.push(`  -H "Authorization: Bearer $LOSSREG_API_KEY" \\`);
  lines.push(`  -H 'Content-Type: application/json' \\`);
  lines.push(`  -d ${shellQuote(JSON.stringify(body))}`);
  return lines.join("\n") + "\n";
}

function pyValue(v) {
  if (v === null) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (Array.isArray(v)) return "[" + v.map(pyValue).join(", ") + "]";
  if (typeof v === "object") return "{" + Object.entries(v).map(([k, w]) => `${JSON.stringify(k)}: ${pyValue(w)}`).join(", ") + "}";
  return JSON.stringify(v);
}

function pythonSnippet(curve, idx) {
  const inputs = pointInputs(curve, idx);
  const lines = ["import numpy as np", "import lossreg", ""];
  if (state.keyRequired || apiKey()) lines.push("# the key is read from LOSSREG_API_KEY (export it first)");
  lines.push(`client = lossreg.Client(${JSON.stringify(serverUrl())})`);
  lines.push("tensors = {");
  Object.entries(inputs).forEach(([name, t]) => {
    lines.push(`    ${JSON.stringify(name)}: np.array(${pyValue(t.data)}, dtype=np.${t.dtype}).reshape(${pyValue(t.shape)}),`);
  });
  lines.push("}");
  const params = nonfiniteAt(curve, idx) ? { ...curve.params, nonfinite: "allow" } : curve.params;
  lines.push(`result = client.evaluate(${JSON.stringify(curve.loss)}, params=${pyValue(params)}, grad=[${JSON.stringify(curve.sweep.input)}], **tensors)`);
  const index = curve.sweep.index.length ? `[${curve.sweep.index.join(", ")}]` : "[()]";
  lines.push(`print("loss", float(result.loss), "grad", float(result.grads[${JSON.stringify(curve.sweep.input)}]${index}))`);
  return lines.join("\n") + "\n";
}

async function copySnippet(i, kind) {
  const curve = state.curves[i];
  const idx = state.cursor === null ? Math.floor(curve.x.length / 2) : state.cursor;
  const text = kind === "curl" ? curlSnippet(curve, idx) : pythonSnippet(curve, idx);
  const box = $("snippet");
  box.value = text;
  box.dataset.kind = kind;
  box.dataset.curve = i;
  box.dataset.idx = idx;
  try {
    await navigator.clipboard.writeText(text);
    box.title = "copied to the clipboard";
  } catch (e) {
    box.title = "select and copy this text";  // no clipboard permission: the text is here
  }
}

/* ---------- start ----------------------------------------------------------------------------- */

async function start() {
  $("key-form").addEventListener("submit", onKeySubmit);
  $("filter-name").addEventListener("input", () => { clearTimeout(filterTimer); filterTimer = setTimeout(loadCatalog, 200); });
  $("filter-tag").addEventListener("change", loadCatalog);
  $("scenario").addEventListener("change", () => applyScenario(currentScenario(), state.spec, false));
  $("add-curve").addEventListener("click", addCurves);
  $("clear-curves").addEventListener("click", () => { state.curves = []; renderCurves(); });
  $("table-toggle").addEventListener("change", () => { $("table-view").hidden = !$("table-toggle").checked; });
  ["x-start", "x-stop", "x-points"].forEach((id) => $(id).addEventListener("change", refreshCurves));
  try {
    const meta = await api("v2");
    $("server-info").textContent = `${meta.name} ${meta.version} at ${serverUrl()}`;
  } catch (err) {
    showMessage("The server did not answer: " + err.message);
  }
  await loadCatalog();
  document.body.dataset.ready = "true";
}

start();
