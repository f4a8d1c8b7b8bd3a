/* The zeroshift page: lists the served models, sends images and labels to POST /v1/classify, and draws
   each model's ranking as bars, teacher next to the models made from it. Talks only to this server. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("classify");
  const input = $("images");
  const drop = $("drop");
  const labelsBox = $("labels");
  const submit = $("submit");
  const statusBox = $("status");
  const errorBox = $("error");
  const results = $("results");
  const resultList = $("result-list");

  let files = [];            // the chosen File objects, in upload order
  let thumbs = [];           // object URLs of their thumbnails, same order
  const models = new Map();  // spec -> {spec, kind, teacher, dims, parameters, results}

  /** Element with attributes and children; strings become text nodes (never parsed as HTML). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "style") Object.assign(node.style, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function say(message) {
    statusBox.textContent = message;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  /** "1.2M", "35.4k", "812" for a parameter count; "" when unknown. */
  function count(n) {
    if (typeof n !== "number" || !isFinite(n)) return "";
    if (n >= 1e9) return (n / 1e9).toFixed(2) + "B";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
    return String(n);
  }

  /** "0.4M params per image, 22.7M per label set": the image path and the text side, as /v1/models gives them. */
  function paramsText(p) {
    if (!p || typeof p !== "object") return "";
    const parts = [count(p.image) && `${count(p.image)} params per image`, count(p.text) && `${count(p.text)} per label set`];
    return parts.filter(Boolean).join(", ");
  }

  function percent(p) {
    return (100 * p).toFixed(1) + "%";
  }

  /** A number as short text: integers as they are, others to 3 significant digits. */
  function num(v) {
    return Number.isInteger(v) ? String(v) : v.toPrecision(3);
  }

  /** "joint 512, image 1280" from a dims object (or a plain number). */
  function dimsText(dims) {
    if (typeof dims === "number") return `${dims}-d`;
    if (!dims || typeof dims !== "object") return "";
    const entries = Object.entries(dims).filter(([, v]) => typeof v === "number");
    return entries.map(([k, v]) => (k === "joint" ? `${v}-d` : `${k} ${v}`)).join(", ");
  }

  /** A model's stored benchmark records as short text: "cifar10 acc1 0.912; ...". */
  function summary(res) {
    const records = Array.isArray(res) ? res : res && typeof res === "object" ? [res] : [];
    return records.slice(0, 4).map((r) => {
      const metrics = r && typeof r.metrics === "object" && r.metrics ? r.metrics : r || {};
      const shown = Object.entries(metrics).filter(([, v]) => typeof v === "number").slice(0, 2)
        .map(([k, v]) => `${k} ${num(v)}`).join(", ");
      return [r && typeof r.dataset === "string" ? r.dataset : "", shown].filter(Boolean).join(" ");
    }).filter(Boolean).join("; ");
  }

  /** Specs reordered so each teacher comes first and the models made from it follow it. */
  function sideBySide(specs) {
    const present = new Set(specs);
    const out = [];
    const place = (spec) => {
      if (out.includes(spec)) return;
      out.push(spec);
      for (const other of specs) {
        if ((models.get(other) || {}).teacher === spec) place(other);
      }
    };
    for (const spec of specs) {
      const teacher = (models.get(spec) || {}).teacher;
      if (!teacher || !present.has(teacher)) place(spec);
    }
    for (const spec of specs) place(spec);  // cycles or unknown models: keep the rest in server order
    return out;
  }

  async function loadModels() {
    const list = $("models");
    const select = $("model");
    try {
      const response = await fetch("/v1/models", {headers: {Accept: "application/json"}});
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
      models.clear();
      for (const m of body.models || []) models.set(m.spec, m);
      list.replaceChildren();
      for (const spec of sideBySide([...models.keys()])) {
        const m = models.get(spec);
        const facts = [
          m.kind ? el("span", {class: "badge"}, m.kind) : null,
          m.teacher ? el("span", {}, "teacher ", el("code", {}, m.teacher)) : null,
          dimsText(m.dims) ? el("span", {}, dimsText(m.dims)) : null,
          paramsText(m.parameters) ? el("span", {}, paramsText(m.parameters)) : null,
        ];
        const res = summary(m.results);
        list.append(el("li", {"data-testid": "model", "data-model": spec},
          el("code", {class: "spec"}, spec), el("span", {class: "facts"}, facts),
          res ? el("span", {class: "muted small"}, res) : null));
        select.append(el("option", {value: spec}, spec));
      }
      if (!models.size) list.append(el("li", {class: "muted"}, "No models are served."));
    } catch (e) {
      list.replaceChildren(el("li", {class: "error-text"}, `Could not list the served models: ${e.message}`));
    } finally {
      list.setAttribute("aria-busy", "false");
    }
  }

  /** Replace the chosen images with `chosen` (a FileList or array) and show them. */
  function choose(chosen) {
    for (const url of thumbs) URL.revokeObjectURL(url);
    files = [...chosen].filter((f) => f.type === "" || f.type.startsWith("image/"));
    thumbs = files.map((f) => URL.createObjectURL(f));
    const picked = $("picked");
    picked.replaceChildren(...files.map((f, i) => el("li", {},
      el("img", {src: thumbs[i], alt: "", width: 48, height: 48}), el("span", {}, f.name))));
    const skipped = chosen.length - files.length;
    say(`${files.length} image${files.length === 1 ? "" : "s"} chosen` +
        (skipped ? `; ${skipped} file${skipped === 1 ? " is" : "s are"} not an image and left out.` : "."));
  }

  function modelCard(entry, imageIndex) {
    const info = models.get(entry.model) || {};
    const head = el("div", {class: "card-head"},
      el("h4", {}, el("code", {}, entry.model)),
      info.kind ? el("span", {class: "badge"}, info.kind) : null,
      info.teacher ? el("span", {class: "muted small"}, "from ", el("code", {}, info.teacher)) : null,
      el("span", {class: "latency", "data-testid": "latency", title: "server-side time for this model"},
        typeof entry.ms === "number" ? `${entry.ms.toFixed(1)} ms` : ""));
    if (entry.error) {
      return el("div", {class: "card", "data-testid": "model-result", "data-model": entry.model},
        head, el("p", {class: "error-text"}, entry.error));
    }
    const top1 = entry.top1 ?? (entry.ranking[0] || {}).label;
    const rows = entry.ranking.map((r, rank) => {
      const best = r.label === top1;
      const id = `bar-${imageIndex}-${entry.model}-${rank}`.replace(/[^\w-]/g, "_");
      return el("li", {class: best ? "rank top1" : "rank", "data-testid": "result-row",
                       "data-model": entry.model, "data-label": r.label, "data-prob": r.prob,
                       "data-top1": best ? "true" : null},
        el("span", {class: "label", id}, r.label, best ? el("span", {class: "sr-only"}, " (top 1)") : null),
        el("span", {class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": 100,
                    "aria-valuenow": (100 * r.prob).toFixed(1), "aria-labelledby": id},
          el("span", {class: "fill", style: {width: `${Math.max(0, Math.min(1, r.prob)) * 100}%`}})),
        el("span", {class: "pct", "data-testid": "percent"}, percent(r.prob)));
    });
    return el("div", {class: "card", "data-testid": "model-result", "data-model": entry.model},
      head, el("ol", {class: "ranking", "aria-label": `Ranking by ${entry.model}`}, rows));
  }

  function render(body) {
    resultList.replaceChildren();
    (body.results || []).forEach((item, i) => {
      const file = files[i] && files[i].name === item.image ? i : files.findIndex((f) => f.name === item.image);
      const thumb = file >= 0 ? el("img", {src: thumbs[file], alt: `Thumbnail of ${item.image}`, class: "thumb"}) : null;
      const entries = item.models || [];
      const bySpec = new Map(entries.map((m) => [m.model, m]));
      const cards = item.error ? [el("p", {class: "error-text"}, item.error)]
        : sideBySide(entries.map((m) => m.model)).map((spec) => modelCard(bySpec.get(spec), i));
      resultList.append(el("article", {class: "result", "data-testid": "image-result", "data-image": item.image},
        el("figure", {}, thumb, el("figcaption", {}, item.image)),
        el("div", {class: "cards"}, cards)));
    });
    results.hidden = false;
    results.scrollIntoView({block: "start"});
  }

  async function classify(event) {
    event.preventDefault();
    showError("");
    const labels = labelsBox.value.trim();
    if (!files.length) {
      showError("Choose or drop at least one image first.");
      input.focus();
      return;
    }
    if (!labels) {
      showError("Type at least two labels, separated by commas or one per line.");
      labelsBox.focus();
      return;
    }
    const data = new FormData();
    for (const f of files) data.append("image", f, f.name);
    data.append("labels", labels);
    const templates = $("templates").value.trim();
    if (templates) data.append("templates", templates);
    const model = $("model").value;
    if (model) data.append("model", model);

    submit.disabled = true;
    results.setAttribute("aria-busy", "true");
    say(`Classifying ${files.length} image${files.length === 1 ? "" : "s"}…`);
    const started = performance.now();
    try {
      const response = await fetch("/v1/classify", {method: "POST", body: data});
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        const detail = body.error || (typeof body.detail === "string" ? body.detail : "") || response.statusText;
        throw new Error(`${response.status}: ${detail}`);
      }
      render(body);
      const n = (body.results || []).length;
      const k = new Set((body.results || []).flatMap((r) => (r.models || []).map((m) => m.model))).size;
      say(`Classified ${n} image${n === 1 ? "" : "s"} with ${k} model${k === 1 ? "" : "s"} ` +
          `in ${Math.round(performance.now() - started)} ms.`);
      document.body.dataset.state = "done";
    } catch (e) {
      say("");
      showError(`Classification failed: ${e.message}`);
      document.body.dataset.state = "error";
    } finally {
      submit.disabled = false;
      results.setAttribute("aria-busy", "false");
    }
  }

  input.addEventListener("change", () => choose(input.files));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      if (name === "drop" || !drop.contains(e.relatedTarget)) drop.classList.remove("over");
    });
  }
  drop.addEventListener("drop", (e) => {
    if (e.dataTransfer && e.dataTransfer.files.length) {
      input.value = "";  // the dropped files replace any picked ones
      choose(e.dataTransfer.files);
    }
  });
  // A file dropped beside the zone would make the browser open it and leave the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  for (const box of [labelsBox, $("templates")]) {
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
  }
  form.addEventListener("submit", classify);
  loadModels();
})();
