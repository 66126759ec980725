// The dashboard page: polls the JSON API, sends commands and answers, shows every reply.
"use strict";
const $ = (id) => document.getElementById(id);
let config = { labels: [], frame_interval: 0.33, settings: {} };
let state = {};
let sessionEmotions = [];

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" },
                                            body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    let detail = data && data.detail !== undefined ? data.detail : r.statusText;
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
    throw new Error(`${r.status}: ${detail}`);
  }
  return data;
}

function feedback(ok, text) {
  const f = $("feedback");
  f.textContent = text;
  f.className = "feedback " + (ok ? "ok" : "refused");
}

// ---- form and cards -------------------------------------------------------------------
function buildForm() {
  const s = config.settings || {};
  const box = $("emotion-choices");
  box.textContent = "";
  for (const label of config.labels) {
    const l = el("label");
    const cb = el("input");
    cb.type = "checkbox"; cb.value = label; cb.name = "emotion";
    cb.checked = (s.emotions || []).includes(label);
    l.append(cb, document.createTextNode(label));
    box.append(l);
  }
  $("child-name").value = s.child_name || "";
  $("teaching-trials").value = s.teaching_trials_per_emotion ?? 1;
  $("practice-trials").value = s.practice_trials_per_emotion ?? 2;
  sessionEmotions = s.emotions || [];
  $("answer-mode").hidden = s.practice_answer_mode !== "imitation";
  buildCards();
  if (s.error) feedback(false, "therapy node settings: " + s.error);
}

function formSettings() {
  const emotions = [...document.querySelectorAll("#emotion-choices input:checked")].map((c) => c.value);
  return {
    child_name: $("child-name").value.trim(),
    emotions,
    teaching_trials_per_emotion: parseInt($("teaching-trials").value, 10),
    practice_trials_per_emotion: parseInt($("practice-trials").value, 10),
  };
}

function buildCards() {
  const box = $("cards");
  box.textContent = "";
  for (const label of sessionEmotions) {
    const b = el("button", label, "card");
    b.dataset.emotion = label;
    b.addEventListener("click", () => answer(label));
    box.append(b);
  }
}

// ---- controls ---------------------------------------------------------------------------
async function command(verb) {
  let body = {};
  if (verb === "start") {
    body = formSettings();
    if (!body.emotions.length) { feedback(false, "start: choose at least one emotion"); return; }
    if (Number.isNaN(body.teaching_trials_per_emotion) || Number.isNaN(body.practice_trials_per_emotion)) {
      feedback(false, "start: trial counts must be numbers"); return;
    }
  }
  feedback(true, `${verb}…`);
  try {
    const r = await api(`/api/command/${verb}`, body);
    feedback(r.success, `${verb}: ${r.message}`);
    if (verb === "start" && r.success) { sessionEmotions = body.emotions; buildCards(); }
  } catch (e) {
    feedback(false, `${verb} failed: ${e.message}`);
  }
  pollState();
}

async function answer(label) {
  try {
    const r = await api("/api/answer", { answer: label });
    feedback(r.success, `answer ${r.message}`);
  } catch (e) {
    feedback(false, `answer ${label} failed: ${e.message}`);
  }
  pollState();
}

// ---- live -------------------------------------------------------------------------------
function showState(s) {
  state = s;
  $("stage").textContent = s.received ? s.stage : "no therapy node";
  $("phase").textContent = s.phase || "–";
  $("trial").textContent = s.trials_total ? `${s.trial}/${s.trials_total}` : "–";
  $("target").textContent = s.target_emotion || "–";
  $("score").textContent = `${s.correct}/${s.attempted}`;
  $("outcome").textContent = s.last_outcome || "–";
  const running = !["idle", "done"].includes(s.stage);
  $("start-form").hidden = running;
  $("btn-start").disabled = running;
  for (const v of ["pause", "skip", "stop"]) $(`btn-${v}`).disabled = !running;
  $("btn-resume").disabled = !s.paused;
  $("btn-pause").disabled = !running || s.paused;
  const p = $("paused");
  p.hidden = !s.paused;
  p.textContent = s.paused ? `Paused: ${s.pause_reason}` : "";
  for (const c of document.querySelectorAll(".card")) {
    c.classList.toggle("target", c.dataset.emotion === s.target_emotion);
  }
}

async function pollState() {
  try { showState(await api("/api/state")); setConnection(true); } catch (e) { setConnection(false, e.message); }
}

function setConnection(ok, text) {
  const c = $("connection");
  c.textContent = ok ? "connected" : `offline (${text})`;
  c.className = "badge " + (ok ? "ok" : "bad");
}

async function pollLive() {
  let live;
  try { live = await api("/api/live"); } catch (e) { return; }
  const box = $("alerts");
  box.textContent = "";
  const now = Date.now();
  for (const a of live.alerts.slice().reverse().slice(0, 3)) {
    const recent = now - Date.parse(a.time) < 60000;
    box.append(el("div", `${a.time.slice(11)}  ${a.text}`, recent ? "" : "old"));
  }
  if (!live.therapy_node) box.prepend(el("div", "The therapy node is not running."));
  const x = live.expression;
  $("expression").textContent = x ? `${x.expression} ${(x.confidence * 100).toFixed(0)}%` +
    (x.is_child ? "" : " (not the followed child)") : "no face";
  const bars = $("bars");
  bars.textContent = "";
  for (const label of config.labels) {
    const p = x && x.scores[label] !== undefined ? x.scores[label] : 0;
    const bar = el("div", undefined, "bar" + (x && x.expression === label ? " top" : ""));
    const fill = el("span");
    fill.style.width = `${(p * 100).toFixed(0)}%`;
    bar.append(fill);
    bars.append(el("span", label), bar, el("span", `${(p * 100).toFixed(0)}%`));
  }
}

let frameUrl = null;
function noFrame() { $("frame").hidden = true; $("no-frame").hidden = false; }
async function frameLoop() {
  // Only while the page is shown: the server drops the image subscription when nobody asks.
  if (document.visibilityState === "visible") {
    try {
      const r = await fetch("/api/frame.jpg");
      if (r.status === 200) {
        const url = URL.createObjectURL(await r.blob());
        $("frame").src = url;
        $("frame").hidden = false;
        $("no-frame").hidden = true;
        if (frameUrl) URL.revokeObjectURL(frameUrl);
        frameUrl = url;
      } else {
        noFrame();
      }
    } catch (e) { noFrame(); }
  }
  setTimeout(frameLoop, config.frame_interval * 1000);
}

// ---- history ----------------------------------------------------------------------------
async function loadHistory() {
  const box = $("history");
  let data;
  try { data = await api("/api/sessions"); } catch (e) { box.textContent = e.message; return; }
  box.textContent = "";
  if (!data.sessions.length) box.append(el("p", `No sessions in ${data.log_dir} yet.`));
  for (const s of data.sessions) {
    const d = el("details");
    d.append(el("summary", `${s.session_id}  score ${s.score || "–"}  (${s.end_reason})`));
    if (s.trials.length) {
      const t = el("table");
      const cols = ["stage", "trial", "emotion", "outcome", "answer", "attempts", "response_time_s"];
      const head = el("tr");
      cols.forEach((c) => head.append(el("th", c)));
      t.append(head);
      for (const row of s.trials) {
        const tr = el("tr");
        cols.forEach((c) => tr.append(el("td", row[c] ?? "")));
        t.append(tr);
      }
      d.append(t);
    } else {
      d.append(el("p", "no trials"));
    }
    if (s.has_timeline) {
      const img = el("img", undefined, "timeline");
      img.loading = "lazy";
      img.alt = `timeline of ${s.session_id}`;
      d.addEventListener("toggle", () => { if (d.open && !img.src) img.src =
        `/api/sessions/${encodeURIComponent(s.session_id)}/timeline.png`; });
      d.append(img);
    }
    box.append(d);
  }
}

async function init() {
  document.querySelectorAll("button[data-verb]").forEach((b) =>
    b.addEventListener("click", () => command(b.dataset.verb)));
  $("btn-history").addEventListener("click", loadHistory);
  try { config = await api("/api/config"); } catch (e) { feedback(false, e.message); }
  buildForm();
  await pollState();
  setInterval(pollState, 500);
  setInterval(pollLive, 700);
  pollLive();
  frameLoop();
  loadHistory();
}
init();
