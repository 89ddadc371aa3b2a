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
      row.querySelector(".name").textContent = p.display_name || "(anonymous)";
      row.querySelector(".delete").onclick = () => deletePerson(p);
      row.querySelector(".export").onclick = () => exportPerson(p);
      row.querySelector(".show-sightings").onclick = (ev) => { ev.preventDefault(); showSightings(p); };
      body.appendChild(row);
      thumbnail(p.id, row.querySelector("img"));
    }
    status(`${persons.length} people`);
  } catch (e) { status(e.message, true); }
}

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
  const box = $("#sightings");
  box.innerHTML = "";
  const rows = await (await api(`/sightings?person_id=${p.id}`)).json();
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

$("#save-key").onclick = () => {
  apiKey = $("#api-key").value.trim();
  localStorage.setItem("reidApiKey", apiKey);
  loadPersons();
};
$("#refresh").onclick = loadPersons;
$("#show-audit").onclick = showAudit;

$("#identify-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const out = $("#identify-result");
  const form = new FormData();
  form.append("image", $("#identify-file").files[0]);
  form.append("modality", $("#identify-modality").value);
  try {
    const r = await (await api("/identify", { method: "POST", body: form })).json();
    if (r.known) {
      out.innerHTML = `<span class="known">Known: <span class="who"></span></span> (score ${r.person.score.toFixed(3)})`;
      out.querySelector(".who").textContent = r.person.display_name || `person ${r.person.person_id}`;
    } else {
      const best = r.matches[0];
      out.innerHTML = `<span class="unknown">Nobody we know</span>` +
        (best ? ` (closest: person ${best.person_id}, score ${best.score.toFixed(3)})` : "");
    }
    if (r.decision && r.normalised_score !== null) {  // the evidence the answer was decided on
      const d = r.decision, ev = document.createElement("div");
      ev.className = "evidence";
      ev.textContent = d.rule === "margin"
        ? `score ${r.score.toFixed(3)} - ${d.beta} x runner-up ${r.runner_up.toFixed(3)} = ` +
          `${r.normalised_score.toFixed(3)} ${r.known ? ">=" : "<"} threshold ${d.threshold.toFixed(3)} (${d.source})`
        : `score ${r.score.toFixed(3)} ${r.known ? ">=" : "<"} threshold ${d.threshold.toFixed(3)} (${d.source})`;
      out.appendChild(ev);
    }
  } catch (e) { out.innerHTML = ""; out.textContent = e.message; out.className = "error"; }
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

if (apiKey) loadPersons();
