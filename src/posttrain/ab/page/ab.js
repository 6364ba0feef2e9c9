// The A/B page: one pair at a time from the server, shown as text (textContent: an answer that
// holds markup appears literally), a vote by click or key. It never learns which model wrote
// which answer: the server keeps that with the pair's token.
"use strict";

const KEYS = { a: "a", "1": "a", b: "b", "2": "b", t: "tie", x: "both_bad" };
let annotator = new URLSearchParams(location.search).get("annotator");
let current = null;
let sending = false;

function show(id, visible) { document.getElementById(id).hidden = !visible; }
function say(text) { document.getElementById("status").textContent = text; }

function messagesText(messages) {
  return messages.map((m) => (messages.length > 1 ? m.role + ": " : "") + m.content).join("\n\n");
}

async function next() {
  const res = await fetch("/api/next?annotator=" + encodeURIComponent(annotator), { cache: "no-store" });
  const body = await res.json();
  if (!res.ok) { say(body.error || "the server refused: " + res.status); return; }
  if (body.done) { current = null; show("pair", false); say("All prompts voted on. Thank you!"); return; }
  current = body;
  document.getElementById("name").textContent = annotator;
  document.getElementById("count").textContent = String(body.position) + " of " + String(body.total);
  document.getElementById("prompt").textContent = messagesText(body.prompt);
  document.getElementById("answer-a").textContent = body.answers[0];
  document.getElementById("answer-b").textContent = body.answers[1];
  show("pair", true);
  say("");
}

async function vote(choice) {
  if (!current || sending) return;
  sending = true;
  try {
    const res = await fetch("/api/vote", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: current.token, annotator: annotator, choice: choice }),
    });
    if (!res.ok && res.status !== 409) { say((await res.json()).error || "the vote was refused"); return; }
    await next();
  } finally {
    sending = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("button[data-choice]").forEach((b) =>
    b.addEventListener("click", () => vote(b.dataset.choice)));
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.ctrlKey || e.metaKey || e.altKey) return;
    const choice = KEYS[e.key.toLowerCase()];
    if (choice) { e.preventDefault(); vote(choice); }
  });
  document.getElementById("who").addEventListener("submit", (e) => {
    e.preventDefault();
    annotator = document.getElementById("annotator").value;
    history.replaceState(null, "", "?annotator=" + encodeURIComponent(annotator));
    show("who", false);
    next();
  });
  if (annotator) { next(); } else { show("who", true); }
});
