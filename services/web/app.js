// The gallery's web page: plain JavaScript over the REST API (the API key travels in X-API-Key).
"use strict";
const $ = (sel) => document.querySelector(sel);
let apiKey = localStorage.getItem("reidApiKey") || "";
$("#api-key").value = apiKey;

function status(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

async function api(path, options = {}) {
  const headers = Object.assign({ "X-API-Key": apiKey }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response;
}

async function thumbnail(personId, img) {
  try {
    const blob = await (await api(`/persons/${personId}/thumbnail`)).blob();
    img.src = URL.createObjectURL(blob);
  } catch (e) { img.alt = "no picture"; }
}

// The crop a template was made from; the person's thumbnail when the template has none.
async function templateCrop(personId, templateId, img) {
  try {
    const blob = await (await api(`/persons/${personId}/templates/${templateId}/image`)).blob();
    img.src = URL.createObjectURL(blob);
  } catch (e) { await thumbnail(personId, img); }
}

async function loadPersons() {
  const body = $("#persons tbody");
  try {
    const persons = await (await api("/persons?limit=500")).json();
    body.innerHTML = "";
    for (const p of persons) {
      const row = document.createElement("tr");
      row.dataset.personId = p.id;
      const templates = Object.entries(p.templates).map(([k, v]) => `${k.split("/")[0]}: ${v}`).join(", ");
      row.innerHTML = `<td><img class="thumb"></td><td>${p.id}</td><td class="name"></td><td>${p.kind}</td>` +
        `<td>${templates}</td><td><a href="#" class="show-sightings">${p.sightings}</a></td>` +
        `<td><button class="export">Export</button> <button class="delete">Delete</button></td>`;
      row.querySelector(".name").innerHTML = `<a href="#" class="open-person"></a>`;
      row.querySelector(".open-person").textContent = p.display_name || "(anonymous)";
      row.querySelector(".open-person").onclick = async (ev) => {
        ev.preventDefault();
        await showPerson(p.id);
        $("#person-panel h2").focus();  // from the keyboard: the page opens where Tab goes on
      };
      row.querySelector(".delete").onclick = () => deletePerson(p);
      row.querySelector(".export").onclick = () => exportPerson(p);
      row.querySelector(".show-sightings").onclick = (ev) => { ev.preventDefault(); showSightings(p); };
      body.appendChild(row);
      thumbnail(p.id, row.querySelector("img"));
    }
    status(`${persons.length} people`);
  } catch (e) { status(e.message, true); }
}

// The person page: templates with their crops per modality, consent and purpose, merge, export, erase,
// and sightings as a timeline per camera.
let current = null;
async function showPerson(id) {
  try {
    const p = await (await api(`/persons/${id}/record`)).json();
    current = p;
    $("#person-panel").hidden = false;
    $("#person-title").textContent = `${p.display_name || "(anonymous)"} (id ${p.id}, ${p.kind})`;
    $("#person-name").value = p.display_name || "";
    $("#person-purpose").value = p.purpose || "";
    $("#person-consent").value = p.consent ? JSON.stringify(p.consent) : "";
    const box = $("#person-templates");
    box.innerHTML = "";
    const templates = await (await api(`/persons/${id}/templates`)).json();
    const byModality = {};
    for (const t of templates) (byModality[t.modality] = byModality[t.modality] || []).push(t);
    for (const [modality, list] of Object.entries(byModality)) {
      const group = document.createElement("div");
      group.className = "templates";
      group.dataset.modality = modality;
      group.innerHTML = `<b></b> `;
      group.querySelector("b").textContent = `${modality} (${list.length})`;
      for (const t of list) {
        const img = document.createElement("img");
        img.className = "template";
        img.alt = `template ${t.id}`;
        img.title = `${t.model_id}, ${t.source || ""}, ${new Date(t.created_at).toLocaleString()}`;
        group.appendChild(img);
        if (t.image) {
          api(`/persons/${id}/templates/${t.id}/image`).then((r) => r.blob())
            .then((b) => { img.src = URL.createObjectURL(b); }).catch(() => { img.alt = "no picture"; });
        }
      }
      box.appendChild(group);
    }
    if (!templates.length) box.textContent = "no templates";
    await timeline(id, $("#person-sightings"));
  } catch (e) { status(e.message, true); }
}

async function timeline(id, box) {
  box.innerHTML = "";
  const rows = await (await api(`/sightings?person_id=${id}`)).json();
  const byCamera = {};
  for (const s of rows) (byCamera[s.camera_id] = byCamera[s.camera_id] || []).push(s);
  for (const [camera, list] of Object.entries(byCamera)) {
    const div = document.createElement("div");
    div.className = "camera";
    div.innerHTML = `<b></b> ` + list.map((s) => `<span>${new Date(s.seen_at).toLocaleString()}</span>`).join("");
    div.querySelector("b").textContent = camera;
    box.appendChild(div);
  }
  if (!rows.length) box.textContent = "no sightings";
}

$("#person-close").onclick = () => {
  const id = current && current.id;
  $("#person-panel").hidden = true;
  current = null;
  const link = $(`#persons tr[data-person-id="${id}"] .open-person`);
  if (link) link.focus();  // back where the person was opened
};
$("#person-form").onsubmit = async (ev) => {
  ev.preventDefault();
  let consent = null;
  const text = $("#person-consent").value.trim();
  if (text) {
    try { consent = JSON.parse(text); } catch (e) { status(`consent: not valid JSON (${e.message})`, true); return; }
  }
  try {
    await api(`/persons/${current.id}`, {
      method: "PATCH", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ display_name: $("#person-name").value || null, purpose: $("#person-purpose").value || null, consent }),
    });
    await loadPersons();
    await showPerson(current.id);
    status(`saved person ${current.id}`);
  } catch (e) { status(e.message, true); }
};
$("#merge-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const other = Number($("#merge-other").value);
  try {
    await api(`/persons/${current.id}/merge`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ remove: other }),
    });
    await loadPersons();
    await showPerson(current.id);
    status(`merged person ${other} into person ${current.id}`);
  } catch (e) { status(e.message, true); }
};
$("#person-export").onclick = () => exportPerson(current);
$("#person-erase").onclick = async () => {
  const p = current;
  await deletePerson(p);
  $("#person-panel").hidden = true;
};

async function deletePerson(p) {
  if (!confirm(`Erase ${p.display_name || "person " + p.id} and all their templates and sightings?`)) return;
  try {
    await api(`/persons/${p.id}`, { method: "DELETE" });
    await loadPersons();
    status(`deleted person ${p.id}`);
  } catch (e) { status(e.message, true); }
}

async function exportPerson(p) {
  // subject access: everything held about the person, as a zip (admin keys only)
  try {
    const blob = await (await api(`/persons/${p.id}/export`)).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `person-${p.id}.zip`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    status(`exported person ${p.id} (${Math.ceil(blob.size / 1024)} KB)`);
  } catch (e) { status(e.message, true); }
}

async function showAudit() {
  const body = $("#audit tbody");
  try {
    const rows = await (await api("/audit?limit=50")).json();
    $("#audit-panel").hidden = false;
    body.innerHTML = "";
    for (const a of rows) {
      const tr = document.createElement("tr");
      for (const v of [new Date(a.at).toLocaleString(), a.key_id, a.action, a.subject, a.outcome]) {
        const td = document.createElement("td");
        td.textContent = v == null ? "" : v;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    status(`${rows.length} audit entries`);
  } catch (e) { status(e.message, true); }
}

async function showSightings(p) {
  $("#sightings-panel").hidden = false;
  $("#sightings-name").textContent = p.display_name || `person ${p.id}`;
  try { await timeline(p.id, $("#sightings")); } catch (e) { status(e.message, true); }
}

// Near misses: a person the system created and the known person it scored just under the threshold against.
async function loadReviews() {
  const list = $("#reviews");
  try {
    const [pairs, c] = await Promise.all([
      (await api("/review?status=open")).json(), (await api("/review/counts")).json(),
    ]);
    const right = c.right_near_threshold === null ? "" :
      `; the system was right to keep them apart in ${Math.round(100 * c.right_near_threshold)}%`;
    $("#review-counts").textContent =
      `${c.open} to judge; ${c.confirmed} confirmed (merged), ${c.rejected} rejected${right}`;
    list.innerHTML = "";
    for (const r of pairs) {
      const li = document.createElement("li");
      li.dataset.reviewId = r.id;
      li.innerHTML = `<img class="thumb new" alt=""><img class="thumb candidate" alt="">` +
        `<span class="pair"></span> <span class="numbers"></span> ` +
        `<button class="confirm">Same person</button> <button class="reject">Different people</button>`;
      li.querySelector(".pair").textContent = `person ${r.person_id} ~ person ${r.candidate_id}`;
      li.querySelector(".numbers").textContent = `(score ${r.score.toFixed(3)}, ${r.normalised.toFixed(3)} < ` +
        `threshold ${r.threshold.toFixed(3)}, ${r.source || r.modality})`;
      thumbnail(r.person_id, li.querySelector(".new"));
      thumbnail(r.candidate_id, li.querySelector(".candidate"));
      const pair = `person ${r.person_id} and person ${r.candidate_id}`;
      li.querySelector(".confirm").setAttribute("aria-label", `Same person: merge ${pair}`);
      li.querySelector(".reject").setAttribute("aria-label", `Different people: keep ${pair} apart`);
      li.querySelector(".confirm").onclick = () => judge(r, "confirm");
      li.querySelector(".reject").onclick = () => judge(r, "reject");
      list.appendChild(li);
    }
  } catch (e) { status(e.message, true); }
}

async function judge(r, verdict) {
  try {
    await api(`/review/${r.id}/${verdict}`, { method: "POST" });
    await Promise.all([loadReviews(), loadPersons()]);
    status(verdict === "confirm" ? `merged person ${r.person_id} into person ${r.candidate_id}`
                                 : `kept person ${r.person_id} and person ${r.candidate_id} apart`);
  } catch (e) { status(e.message, true); }
}

// One tile per camera: its latest annotated frame, the tracks in view with their global ids, frames/s.
async function loadCameras() {
  const box = $("#cameras");
  let cams;
  try { cams = await (await api("/cameras")).json(); } catch (e) { box.textContent = e.message; return; }
  if (!cams.length) { box.textContent = "no camera has reported (start one with --status-dir)"; return; }
  if (!box.querySelector(".tile")) box.textContent = "";
  for (const c of cams) {
    let tile = box.querySelector(`[data-camera-id="${CSS.escape(c.camera_id)}"]`);
    if (!tile) {
      tile = document.createElement("figure");
      tile.className = "tile";
      tile.dataset.cameraId = c.camera_id;
      tile.innerHTML = `<img alt=""><figcaption></figcaption>`;
      box.appendChild(tile);
    }
    const ids = c.tracks.map((t) => t.global_id === null ? `track ${t.track_id}` : `id ${t.global_id}`);
    tile.querySelector("figcaption").textContent = `${c.camera_id}: ${c.running ? "" : "stopped, "}` +
      `${c.fps.toFixed(1)} frames/s, in view: ${ids.length ? ids.join(", ") : "nobody"}`;
    try {
      const blob = await (await api(`/cameras/${encodeURIComponent(c.camera_id)}/frame`)).blob();
      const img = tile.querySelector("img");
      if (img.src) URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(blob);
    } catch (e) { /* the camera is between writes */ }
  }
}

// New sightings as they are written (server-sent events read with fetch: EventSource cannot send the key).
let streamAbort = null;
async function followSightings() {
  if (streamAbort) streamAbort.abort();
  streamAbort = new AbortController();
  try {
    const response = await api("/sightings/stream", { signal: streamAbort.signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").find((l) => l.startsWith("data: "));
        if (data) showSighting(JSON.parse(data.slice(6)));
      }
    }
  } catch (e) { if (e.name !== "AbortError") status(e.message, true); }
}

function showSighting(s) {
  const li = document.createElement("li");
  const score = s.score === null ? "" : ` (${s.modality || "body"} ${s.score.toFixed(2)})`;
  li.textContent = `${new Date(s.seen_at).toLocaleTimeString()} ${s.camera_id}: person ${s.person_id}${score}`;
  li.dataset.personId = s.person_id;
  $("#live-sightings").prepend(li);
}

let cameraTimer = null;
function start() {
  loadPersons();
  loadReviews();
  loadCameras();
  followSightings();
  clearInterval(cameraTimer);
  cameraTimer = setInterval(loadCameras, 1000);
}

$("#save-key").onclick = () => {
  apiKey = $("#api-key").value.trim();
  localStorage.setItem("reidApiKey", apiKey);
  start();
};
$("#load-review").onclick = loadReviews;
$("#refresh").onclick = loadPersons;
$("#show-audit").onclick = showAudit;

// The query photo with the box the answer was made from (the face found; for bodies, the whole photo).
function showQuery(file, box) {
  const fig = $("#identify-query");
  fig.hidden = false;
  const img = fig.querySelector("img"), mark = fig.querySelector(".box");
  mark.hidden = true;
  img.onload = () => {
    if (!box) return;
    const s = img.clientWidth / img.naturalWidth;  // the photo is shown scaled
    Object.assign(mark.style, {
      left: `${box[0] * s}px`, top: `${box[1] * s}px`,
      width: `${(box[2] - box[0]) * s}px`, height: `${(box[3] - box[1]) * s}px`,
    });
    mark.hidden = false;
  };
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
}

// The top persons, best first, with their best template's crop and score; the accepted one is marked.
function showCandidates(r) {
  const list = $("#identify-candidates");
  list.innerHTML = "";
  for (const m of r.matches.slice(0, 5)) {
    const li = document.createElement("li");
    li.className = r.known && r.person.person_id === m.person_id ? "accepted" : "";
    li.innerHTML = `<img class="thumb" alt=""><span class="name"></span> <span class="score"></span>`;
    li.querySelector(".name").textContent = m.display_name || `person ${m.person_id}`;
    li.querySelector(".score").textContent = `score ${m.score.toFixed(3)}`;
    templateCrop(m.person_id, m.template_id, li.querySelector("img"));
    list.appendChild(li);
  }
}

function decisionLine(r) {
  const d = r.decision;
  const cmp = r.known ? ">=" : "<";
  const size = d.size_aware ? ", for this gallery's size" : "";
  return d.rule === "margin"
    ? `score ${r.score.toFixed(3)} - ${d.beta} x runner-up ${r.runner_up.toFixed(3)} = ` +
      `${r.normalised_score.toFixed(3)} ${cmp} threshold ${d.threshold.toFixed(3)} (${d.source}${size})`
    : `score ${r.score.toFixed(3)} ${cmp} threshold ${d.threshold.toFixed(3)} (${d.source}${size})` +
      // the raw rule does not weigh the runner-up, but an operator judges a close second by it all the same
      (r.runner_up == null ? "" : `; runner-up ${r.runner_up.toFixed(3)}`);
}

$("#identify-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const out = $("#identify-result");
  out.className = "";
  const file = $("#identify-file").files[0];
  const form = new FormData();
  form.append("image", file);
  form.append("modality", $("#identify-modality").value);
  $("#identify-candidates").innerHTML = "";
  try {
    const r = await (await api("/identify", { method: "POST", body: form })).json();
    showQuery(file, r.box);
    if (r.known) {
      out.innerHTML = `<span class="known">Known: <span class="who"></span></span> (score ${r.person.score.toFixed(3)})`;
      out.querySelector(".who").textContent = r.person.display_name || `person ${r.person.person_id}`;
    } else {
      out.innerHTML = `<span class="unknown">Nobody we know</span> <span class="absent">(not in the gallery)</span>`;
    }
    if (r.decision && r.normalised_score !== null) {  // the evidence the answer was decided on
      const line = document.createElement("div");
      line.className = "evidence";
      line.textContent = decisionLine(r);
      out.appendChild(line);
    }
    showCandidates(r);
  } catch (e) {
    $("#identify-query").hidden = true;
    out.innerHTML = ""; out.textContent = e.message; out.className = "error";
  }
};

$("#enroll-form").onsubmit = async (ev) => {
  ev.preventDefault();
  try {
    const person = await (await api("/persons", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ display_name: $("#enroll-name").value }),
    })).json();
    const form = new FormData();
    for (const f of $("#enroll-files").files) form.append("images", f);
    form.append("modality", $("#enroll-modality").value);
    const r = await (await api(`/persons/${person.id}/enroll`, { method: "POST", body: form })).json();
    await loadPersons();
    status(`enrolled ${person.display_name} with ${r.template_ids.length} template(s)`);
  } catch (e) { status(e.message, true); }
};

if (apiKey) start();
