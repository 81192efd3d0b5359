// The live comparison page: renders each snapshot the gateway pushes (/ui/events) as it arrives.
// Every figure keeps its exact value in data-value; the text is that value formatted for people.
"use strict";

const STATUSES = ["OK", "FALLBACK", "TIMEOUT", "ERROR"];

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function figure(id, value, format) {
  const dd = el("dd", { "data-testid": id });
  if (value === null || value === undefined) {
    dd.textContent = "–";
    dd.setAttribute("data-value", "");
  } else {
    dd.textContent = format(value);
    dd.setAttribute("data-value", String(value));
  }
  return dd;
}

const ms = (s) => (s * 1000).toFixed(1) + " ms";
const percent = (r) => (r * 100).toFixed(1) + " %";
const fixed3 = (x) => x.toFixed(3);
const count = (n) => Math.round(n).toLocaleString("en-US");

function renderAnswers(snapshot) {
  const tiles = document.getElementById("answers");
  const bar = document.getElementById("answers-bar");
  tiles.replaceChildren();
  bar.replaceChildren();
  const total = snapshot.answers_total;
  for (const status of STATUSES) {
    const n = snapshot.answers[status] || 0;
    const tile = el("div", { class: "tile s-" + status });
    tile.append(el("div", { class: "label" }, status));
    const value = el("div", { class: "value", "data-testid": "answers-" + status, "data-value": String(n) }, count(n));
    tile.append(value, el("div", { class: "share" }, total ? percent(n / total) : "–"));
    tiles.append(tile);
    if (total && n) {
      const part = el("span", { class: "s-" + status, title: status });
      part.style.width = (100 * n / total) + "%";
      bar.append(part);
    }
  }
}

function renderModel(model, champion) {
  const card = el("article", { class: "card", "data-model": model.model });
  const title = el("h3", {}, model.model);
  if (model.model === champion) title.append(el("span", { class: "role" }, "champion"));
  card.append(title);
  const dl = el("dl");
  const row = (label, dd) => dl.append(el("dt", {}, label), dd);
  const name = model.model;
  row("latency p50", figure("lat-" + name + "-0.5", model.latency_s["0.5"], ms));
  row("latency p90", figure("lat-" + name + "-0.9", model.latency_s["0.9"], ms));
  row("latency p99", figure("lat-" + name + "-0.99", model.latency_s["0.99"], ms));
  if (name !== champion) {
    row("agrees with champion", figure("agree-" + name, model.agreement, percent));
    row("score distance (KS)", figure("ks-" + name, model.ks, fixed3));
  }
  row("deadlines met", figure("deadline-" + name, model.deadline.ratio, percent));
  row("outputs in window", figure("outputs-" + name, model.window_outputs, count));
  card.append(dl);
  return card;
}

function render(snapshot) {
  document.getElementById("champion").textContent = snapshot.champion || "–";
  document.getElementById("source").textContent = snapshot.source || "(none configured)";
  const updated = document.getElementById("updated");
  updated.textContent = "updated " + new Date(snapshot.at).toLocaleTimeString();
  updated.setAttribute("data-at", String(snapshot.at));
  const problem = document.getElementById("problem");
  problem.hidden = !snapshot.error;
  problem.textContent = snapshot.error || "";
  renderAnswers(snapshot);
  const cards = document.getElementById("models");
  cards.replaceChildren(...snapshot.models.map((m) => renderModel(m, snapshot.champion)));
  document.body.setAttribute("data-snapshot-at", String(snapshot.at));
  document.body.setAttribute("data-snapshots", String(Number(document.body.getAttribute("data-snapshots") || 0) + 1));
}

function connect() {
  const events = new EventSource("/ui/events");
  events.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  events.onerror = () => {
    document.getElementById("updated").textContent = "disconnected, retrying…";
    if (events.readyState === EventSource.CLOSED) {  // refused (e.g. 503: too many viewers): the browser gives up
      setTimeout(connect, 10000);
    }
  };
}

connect();
