// locomad review: the page. Plain JS, no build step; every URL is relative (the token is in
// the page's own path). Every change is sent at once with the version it was made against.
"use strict";

const $ = (id) => document.getElementById(id);
const video = $("video");
const speech = $("speech");
let S = null;          // the server's view of the track
let sel = null;        // index of the selected cue
let busy = false;
let lastT = 0;
let playingCue = null;
let alts = [];

function fmt(t) {
  const m = Math.floor(t / 60);
  const s = (t - m * 60).toFixed(1).padStart(4, "0");
  return `${String(m).padStart(2, "0")}:${s}`;
}
function say(msg) { $("alert").textContent = ""; $("status").textContent = msg; }
function alarm(msg) { $("status").textContent = ""; $("alert").textContent = msg; }
function cue(i = sel) { return S && S.cues.find((c) => c.index === i); }
function pos(i = sel) { return S.cues.findIndex((c) => c.index === i); }

async function call(method, url, body) {
  const opt = { method, headers: {} };
  if (body !== undefined) {
    opt.headers["Content-Type"] = "application/json";
    opt.body = JSON.stringify(body);
  }
  const r = await fetch(url, opt);
  let data = null;
  try { data = await r.json(); } catch (e) { data = { error: `HTTP ${r.status}` }; }
  if (r.status === 409) { $("stale").hidden = false; }
  if (!r.ok) { const err = new Error(data.error || `HTTP ${r.status}`); err.status = r.status; throw err; }
  return data;
}

// Run one change: busy flag, the message, the focus kept where it was.
async function act(what, fn, done) {
  if (busy) { say("Still working on the last action"); return; }
  busy = true;
  const focusId = document.activeElement && document.activeElement.id;
  say(what + "…");
  try {
    const out = await fn();
    if (out && out.cues) { S = out; render(); }
    say(done ? done(out) : what + ": saved");
  } catch (e) {
    alarm((e.status === 409 || e.status === 423 ? "Not saved: " : "Refused: ") + e.message);
  } finally {
    busy = false;
    const el = focusId && $(focusId);
    if (el && !el.hidden && el.offsetParent !== null) el.focus();
    else focusCue();
  }
}

async function load(keepSel) {
  S = await call("GET", "api/track");
  $("stale").hidden = true;
  $("film").textContent = S.film;
  $("summary").textContent = S.summary || (S.voiced ? "" : "Not voiced yet: run Export to voice the film.");
  if (!keepSel || !cue(sel)) sel = S.cues.length ? S.cues[0].index : null;
  render();
  refreshTrack();
}

function tag(text, kind) { return `<span class="tag ${kind}">${text}</span>`; }
function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }
function fitKind(f) {
  if (!f) return "warn";
  if (f.over_dialogue > 0.001) return "bad";
  return { fitted: "ok", sped_up: "ok", substituted: "warn", extended: "warn", kept: "bad", dropped: "bad" }[f.decision] || "warn";
}
function fitShort(f) {
  if (!f) return "not voiced";
  if (f.over_dialogue > 0.001) return "over dialogue";
  return { fitted: "fits", sped_up: "sped up", substituted: "substituted", extended: "over the gap", kept: "over the gap", dropped: "dropped" }[f.decision] || f.decision;
}

function render() {
  $("count").textContent = `(${S.cues.length})`;
  const ol = $("cues");
  ol.innerHTML = "";
  for (const c of S.cues) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "cue";
    b.id = `cue-${c.index}`;
    b.setAttribute("aria-current", c.index === sel ? "true" : "false");
    const status = (c.approved ? tag("approved", "ok") : "") + tag(fitShort(c.fit), fitKind(c.fit)) + (c.edited ? tag("edited", "warn") : "");
    b.innerHTML = `<span class="time">${fmt(c.start)}–${fmt(c.end)}</span>${status}<span class="txt">${esc(c.text)}</span>` +
      `<span class="meta">${c.fit ? esc(c.fit.label) : "fit not measured (re-voice)"}</span>` +
      `<span class="meta">dialogue before: ${c.dialogue_before ? "“" + esc(c.dialogue_before.text) + "”" : "—"}; after: ${c.dialogue_after ? "“" + esc(c.dialogue_after.text) + "”" : "—"}</span>`;
    b.addEventListener("click", () => { select(c.index, true); playContext(); });
    b.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.ctrlKey) { e.preventDefault(); select(c.index, true); $("text").focus(); } });
    li.appendChild(b);
    ol.appendChild(li);
  }
  $("undo").disabled = !S.can_undo;
  $("redo").disabled = !S.can_redo;
  showEditor();
}

function showEditor() {
  const c = cue();
  const on = !!c;
  for (const id of ["text", "save-text", "approve", "regenerate", "revoice", "context", "delete", "start", "end", "start-minus", "start-plus", "end-minus", "end-plus", "save-times", "add"]) $(id).disabled = !on;
  if (!on) { $("sel-label").textContent = "(none)"; return; }
  $("sel-label").textContent = `${fmt(c.start)}–${fmt(c.end)}`;
  if (document.activeElement !== $("text")) $("text").value = c.text;
  $("start").value = c.start.toFixed(1) === String(c.start) ? c.start.toFixed(1) : String(c.start);
  $("end").value = String(c.end);
  $("approve").setAttribute("aria-pressed", c.approved ? "true" : "false");
  $("approve").firstChild.textContent = c.approved ? "Approved " : "Approve ";
  $("fit").textContent = c.fit ? c.fit.label : "not measured since the last change: re-voice it";
  $("dlg-before").textContent = c.dialogue_before ? `${fmt(c.dialogue_before.start)}–${fmt(c.dialogue_before.end)} “${c.dialogue_before.text}”` : "—";
  $("dlg-after").textContent = c.dialogue_after ? `${fmt(c.dialogue_after.start)}–${fmt(c.dialogue_after.end)} “${c.dialogue_after.text}”` : "—";
  const i = pos();
  const next = S.cues[i + 1];
  const a = c.end + 0.2;
  const b = Math.min(next ? next.start - 0.2 : S.duration, a + 3);
  $("add-start").value = a.toFixed(1);
  $("add-end").value = Math.max(a, b).toFixed(1);
}

function select(index, seek) {
  if (index !== sel) { alts = []; $("alts").hidden = true; }
  sel = index;
  for (const b of document.querySelectorAll("#cues button.cue")) b.setAttribute("aria-current", b.id === `cue-${index}` ? "true" : "false");
  showEditor();
  const c = cue();
  if (seek && c) { video.currentTime = c.start; lastT = c.start - 0.01; }
}
function focusCue() { const b = $(`cue-${sel}`); if (b) b.focus(); else $("cues").focus(); }
function step(d) {
  if (!S.cues.length) return;
  const i = Math.max(0, Math.min(S.cues.length - 1, pos() + d));
  select(S.cues[i].index, true);
  focusCue();
  say(`Cue ${i + 1} of ${S.cues.length}: ${fmt(S.cues[i].start)}, ${S.cues[i].text}`);
}

// --- the AD heard over the ducked film ------------------------------------------------------
function refreshTrack() {
  const t = $("desc-track");
  t.src = `media/descriptions.vtt?v=${S.version}`;
}
function duck(on) { video.volume = on ? 0.25 : 1.0; }
function speak(c) {
  speech.src = `media/speech/${c.index}?v=${S.version}`;
  playingCue = c.index;
  duck(true);
  speech.play().catch(() => duck(false));
}
speech.addEventListener("ended", () => { duck(false); playingCue = null; });
speech.addEventListener("error", () => { duck(false); playingCue = null; });
function tick() {
  const t = video.currentTime;
  if (!video.paused && $("ad-on").checked && S) {
    for (const c of S.cues) {
      if (c.fit && c.fit.start !== undefined && c.fit.start > lastT && c.fit.start <= t && playingCue !== c.index) speak(c);
    }
  }
  lastT = t;
  requestAnimationFrame(tick);
}
video.addEventListener("seeking", () => { lastT = video.currentTime - 0.01; speech.pause(); duck(false); playingCue = null; });
video.addEventListener("pause", () => { speech.pause(); duck(false); $("play").firstChild.textContent = "Play "; });
video.addEventListener("play", () => { $("play").firstChild.textContent = "Pause "; });
requestAnimationFrame(tick);

function togglePlay() { if (video.paused) video.play().catch(() => {}); else video.pause(); }
function playContext() {
  const c = cue();
  if (!c) return;
  const from = c.dialogue_before ? Math.max(c.dialogue_before.start, c.start - 3) : Math.max(0, c.start - 2);
  video.currentTime = from;
  lastT = from - 0.01;
  video.play().catch(() => {});
  say(`Playing from ${fmt(from)}`);
}

// --- actions ----------------------------------------------------------------------------
const v = () => ({ version: S.version });
function saveText() {
  const text = $("text").value;
  act("Saving the text", () => call("PUT", `api/cues/${sel}`, { ...v(), text }), () => "Text saved; re-voice to measure its fit");
}
function setTimes(start, end) {
  act("Saving the times", () => call("PUT", `api/cues/${sel}`, { ...v(), start, end }), () => `Times saved: ${fmt(cue().start)} to ${fmt(cue().end)}`);
}
function nudge(which, d) {
  const c = cue();
  if (!c) return;
  const n = S.nudge * d;
  if (which === "start") setTimes(+(c.start + n).toFixed(3), undefined);
  else setTimes(undefined, +(c.end + n).toFixed(3));
}
function approve() {
  const c = cue();
  if (!c) return;
  act("Approving", () => call("POST", `api/cues/${sel}/approve`, { ...v(), approved: !c.approved }), () => (cue().approved ? "Approved" : "Approval withdrawn"));
}
function regenerate() {
  if (sel === null) return;
  const index = sel;
  act("Asking the model for alternatives", async () => {
    const out = await call("POST", `api/cues/${index}/alternatives`);
    alts = out.alternatives;
    renderAlts();
    return null;
  }, () => `${alts.length} alternatives; press 1 to ${alts.length} to pick one`);
}
function renderAlts() {
  const ol = $("alt-list");
  ol.innerHTML = "";
  alts.forEach((a, k) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.id = `alt-${k + 1}`;
    b.textContent = `Use alternative ${k + 1}`;
    b.setAttribute("aria-describedby", `alt-text-${k + 1}`);
    b.setAttribute("aria-keyshortcuts", String(k + 1));
    b.addEventListener("click", () => pick(k));
    const span = document.createElement("span");
    span.id = `alt-text-${k + 1}`;
    span.textContent = ` “${a.text}” (${a.fit.label})`;
    li.append(b, span);
    ol.appendChild(li);
  });
  $("alts").hidden = alts.length === 0;
}
function pick(k) {
  const a = alts[k];
  if (!a) return;
  act(`Using alternative ${k + 1}`, () => call("PUT", `api/cues/${sel}`, { ...v(), text: a.text }), () => `Alternative ${k + 1} saved: ${a.text}; re-voice to hear it`);
}
function revoice() {
  const index = sel;
  act("Re-voicing", () => call("POST", `api/cues/${index}/revoice`, v()), () => {
    const c = cue(index);
    if (c && c.fit && c.fit.start !== undefined) {
      video.currentTime = Math.max(0, c.fit.start - 0.5);
      lastT = video.currentTime - 0.01;
      video.play().catch(() => {});
    }
    return `Re-voiced: ${c && c.fit ? c.fit.label : "not voiced"}`;
  });
}
function del() {
  const i = pos();
  act("Deleting the cue", async () => {
    const out = await call("POST", `api/cues/${sel}/delete`, v());
    const next = out.cues[Math.min(i, out.cues.length - 1)];
    sel = next ? next.index : null;
    return out;
  }, () => "Cue deleted (u undoes)");
}
function add() {
  const start = parseFloat($("add-start").value), end = parseFloat($("add-end").value), text = $("add-text").value;
  act("Adding a cue", async () => {
    const before = new Set(S.cues.map((c) => c.index));
    const out = await call("POST", "api/cues", { ...v(), start, end, text });
    const n = out.cues.find((c) => !before.has(c.index));
    if (n) sel = n.index;
    $("add-text").value = "";
    return out;
  }, () => "Cue added");
}
function undo() { act("Undoing", () => call("POST", "api/undo", v()), () => "Undone"); }
function redo() { act("Redoing", () => call("POST", "api/redo", v()), () => "Redone"); }
function exportAll() {
  act("Exporting and voicing the film", async () => {
    const out = await call("POST", "api/export", v());
    refreshTrack();
    $("summary").textContent = out.summary || "";
    return out;
  }, (out) => `Exported: ${out.files.join(", ")}`);
}

$("play").addEventListener("click", togglePlay);
$("prev").addEventListener("click", () => step(-1));
$("next").addEventListener("click", () => step(1));
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("export").addEventListener("click", exportAll);
$("save-text").addEventListener("click", saveText);
$("approve").addEventListener("click", approve);
$("regenerate").addEventListener("click", regenerate);
$("revoice").addEventListener("click", revoice);
$("context").addEventListener("click", playContext);
$("delete").addEventListener("click", del);
$("start-minus").addEventListener("click", () => nudge("start", -1));
$("start-plus").addEventListener("click", () => nudge("start", 1));
$("end-minus").addEventListener("click", () => nudge("end", -1));
$("end-plus").addEventListener("click", () => nudge("end", 1));
$("save-times").addEventListener("click", () => setTimes(parseFloat($("start").value), parseFloat($("end").value)));
$("add").addEventListener("click", add);
$("reload").addEventListener("click", () => load(true).then(() => { say("Reloaded the current track"); focusCue(); }));
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); saveText(); }
  else if (e.key === "Escape") { e.preventDefault(); const c = cue(); if (c) $("text").value = c.text; focusCue(); }
});

const KEYS = {
  k: togglePlay, n: () => step(1), b: () => step(-1), c: playContext,
  e: () => { $("text").focus(); $("text").select(); },
  a: approve, g: regenerate, v: revoice, u: undo, r: redo, U: redo, x: exportAll,
  "[": () => nudge("start", -1), "]": () => nudge("start", 1),
  "{": () => nudge("end", -1), "}": () => nudge("end", 1),
  Delete: del,
  i: () => { $("add-box").open = true; $("add-text").focus(); },
  "?": () => $("keys-h").focus(),
};
document.addEventListener("keydown", (e) => {
  const t = e.target;
  const field = t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT");
  if (field) {
    if (e.key === "Escape") { e.preventDefault(); focusCue(); }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (/^[1-9]$/.test(e.key) && alts.length >= +e.key) { e.preventDefault(); pick(+e.key - 1); return; }
  const f = KEYS[e.key];
  if (f && S) { e.preventDefault(); f(); }
});

load(false).catch((e) => alarm("Could not load the track: " + e.message));
