// The dashboard: one WebSocket to the api actor (docs/api.md), the heatmap, the ladder, the
// exchanges (toggles and health) and the recent signals of one instrument.

import { COLUMN_FRAME, LADDER_FRAME, ColumnDecoder, ProtocolError, decodeLadder, frameInstrument,
         frameType } from "./stream.js";
import { Heatmap } from "./heatmap.js";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const $ = (selector) => document.querySelector(selector);
const STATUS_NAMES = ["unknown", "connecting", "syncing", "in_sync", "resyncing", "disconnected", "stale", "error"];

const state = {
  socket: null,
  instruments: [],
  instrument: null,   // the meta message of the instrument shown
  decoder: new ColumnDecoder(),
  awaitingKeyframe: true,
  ladder: null,
  health: null,
  signals: [],
  columnsReceived: 0,
  reconnectDelay: 1000,
};
const heatmap = new Heatmap($("#heatmap"), $("#tooltip"));

function decimalsFor(step) {
  return Math.min(8, Math.max(2, Math.ceil(-Math.log10(step) + 1e-9)));
}

function connect() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = token ? `?token=${encodeURIComponent(token)}` : "";
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  state.socket = socket;
  setConnection("connecting");
  socket.onopen = () => { state.reconnectDelay = 1000; setConnection("live"); };
  socket.onclose = () => {
    setConnection("disconnected");
    setTimeout(connect, state.reconnectDelay);
    state.reconnectDelay = Math.min(10000, state.reconnectDelay * 2);
  };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") onJson(JSON.parse(event.data));
    else onFrame(event.data);
  };
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(message));
}

function setConnection(text) {
  const badge = $("#connection");
  badge.textContent = text;
  badge.dataset.state = text;
}

function onJson(message) {
  switch (message.type) {
    case "hello": {
      state.instruments = message.instruments;
      const select = $("#instrument");
      select.replaceChildren(...message.instruments.map((item) => new Option(item.name, item.name)));
      const wanted = params.get("instrument");
      const chosen = message.instruments.find((item) => item.name === wanted) || message.instruments[0];
      if (chosen) subscribe(state.instrument ? state.instrument.instrument : chosen.name);
      break;
    }
    case "meta":
      state.instrument = message;
      state.decoder = new ColumnDecoder();
      state.awaitingKeyframe = true;
      state.ladder = null;
      heatmap.maxColumns = Math.max(300, message.history_columns);
      heatmap.reset(message.exchanges, message.price_step ? decimalsFor(message.price_step) : 2);
      $("#instrument").value = message.instrument;
      buildExchangeTable();
      break;
    case "signals":
      state.signals = message.signals.slice().reverse();
      renderSignals();
      break;
    case "signal":
      state.signals.unshift(message.signal);
      state.signals.length = Math.min(state.signals.length, 100);
      renderSignals();
      break;
    case "health":
      state.health = message;
      renderHealth();
      break;
    case "error":
      console.warn("api:", message.error);
      $("#problems").textContent = message.error;
      break;
  }
}

function subscribe(name) {
  params.set("instrument", name);
  history.replaceState(null, "", `?${params}`);
  send({ op: "subscribe", instrument: name, ladder_depth: 15 });
}

function onFrame(buffer) {
  const instrument = state.instrument;
  if (!instrument || frameInstrument(buffer) !== instrument.index) return;  // still queued for the last one
  const type = frameType(buffer);
  if (type === COLUMN_FRAME) {
    let column;
    try {
      column = state.decoder.apply(buffer);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      if (!state.awaitingKeyframe) send({ op: "resync" });
      state.awaitingKeyframe = true;
      return;
    }
    state.awaitingKeyframe = false;
    if (!heatmap.decimalsSet) {
      heatmap.decimals = decimalsFor(column.step);
      heatmap.decimalsSet = true;
    }
    state.columnsReceived += 1;
    heatmap.push(column);
  } else if (type === LADDER_FRAME) {
    state.ladder = decodeLadder(buffer);
    renderLadder();
  }
}

// ---- exchanges: toggles, health --------------------------------------------------------

function buildExchangeTable() {
  const body = $("#exchanges tbody");
  body.replaceChildren(...state.instrument.exchanges.map((name, index) => {
    const row = document.createElement("tr");
    row.dataset.exchange = name;
    row.innerHTML = `<td><label><input type="checkbox" class="toggle" checked data-exchange="${name}">
      <span class="name">${name}</span></label></td><td class="status"></td><td class="rate num"></td>
      <td class="resyncs num"></td><td class="checksum num"></td><td class="lag num"></td>`;
    row.querySelector("input").addEventListener("change", (event) => {
      heatmap.setEnabled(index, event.target.checked);
      row.classList.toggle("off", !event.target.checked);
      renderLadder();
    });
    return row;
  }));
  renderHealth();
}

function since(ns) {
  if (!ns) return "";
  const seconds = Math.max(0, Date.now() / 1000 - ns / 1e9);
  return seconds < 90 ? `${seconds.toFixed(0)}s` : `${(seconds / 60).toFixed(0)}m`;
}

function renderHealth() {
  const health = state.health;
  const banner = $("#health");
  if (!health) return;
  banner.textContent = health.healthy ? "healthy" : "unhealthy";
  banner.dataset.state = health.healthy ? "ok" : "bad";
  $("#problems").textContent = health.problems.join(" · ");
  if (!state.instrument) return;
  const market = state.instrument.instrument;
  for (const row of document.querySelectorAll("#exchanges tbody tr")) {
    const report = health.exchanges[row.dataset.exchange];
    if (!report) continue;
    const info = report.markets[market];
    const cell = row.querySelector(".status");
    let word = report.connector && report.connector.state !== "running" ? `connector ${report.connector.state}`
      : !report.connected ? "disconnected" : info ? info.status.replace("_", " ") : "—";
    if (info && info.status !== "in_sync") word += ` ${since(info.since_ns)}`;
    if (info && info.status === "in_sync" && !info.included) word = "in sync, excluded";
    cell.textContent = word;
    cell.dataset.state = info && info.status === "in_sync" && info.included ? "ok" : "bad";
    cell.title = info ? `reason: ${info.reason}` : "";
    row.querySelector(".rate").textContent = info ? info.messages_per_s.toFixed(1) : "";
    row.querySelector(".resyncs").textContent = info ? info.resyncs : "";
    row.querySelector(".checksum").textContent = info ? info.checksum_failures : "";
    row.querySelector(".lag").textContent = info && info.receive_lag_ms !== null ? info.receive_lag_ms.toFixed(1) : "—";
  }
}

// ---- ladder ------------------------------------------------------------------------------

function renderLadder() {
  const ladder = state.ladder;
  const instrument = state.instrument;
  const table = $("#ladder");
  if (!ladder || !instrument) { table.replaceChildren(); return; }
  const on = heatmap.enabled;
  const names = instrument.exchanges;
  const decimals = heatmap.decimals;
  const head = document.createElement("thead");
  head.innerHTML = `<tr><th>price</th><th>total</th>${names.map((name, e) =>
    `<th data-exchange="${name}" title="${name}"${on[e] ? "" : " hidden"}>${shortName(name)}</th>`).join("")}</tr>`;
  const body = document.createElement("tbody");
  const rows = [];
  let largest = 0;
  const collect = (prices, sizes, side) => {
    for (let i = 0; i < prices.length; i++) {
      const cells = [];
      let total = 0;
      for (let e = 0; e < ladder.exchanges; e++) {
        const size = sizes[i * ladder.exchanges + e];
        cells.push(size);
        if (on[e]) total += size;
      }
      if (total > 0) rows.push({ side, price: prices[i], total, cells });
      largest = Math.max(largest, total);
    }
  };
  collect(ladder.askPrice, ladder.askSizes, "ask");
  collect(ladder.bidPrice, ladder.bidSizes, "bid");
  const asks = rows.filter((row) => row.side === "ask").reverse();
  const bids = rows.filter((row) => row.side === "bid");
  for (const row of [...asks, ...bids]) {
    const tr = document.createElement("tr");
    tr.className = row.side;
    const width = largest ? (100 * row.total) / largest : 0;
    tr.innerHTML = `<td class="price">${row.price.toFixed(decimals)}</td>
      <td class="num total" data-size="${row.total}" style="--bar:${width.toFixed(1)}%">${formatSize(row.total)}</td>` +
      row.cells.map((size, e) => `<td class="num" data-exchange="${names[e]}" data-size="${size}"${
        on[e] ? "" : " hidden"}>${size > 0 ? formatSize(size) : ""}</td>`).join("");
    body.appendChild(tr);
  }
  table.replaceChildren(head, body);
  const best = bids.length && asks.length ? [bids[0].price, asks[asks.length - 1].price] : null;
  $("#touch").textContent = best
    ? `${best[0].toFixed(decimals)} / ${best[1].toFixed(decimals)}  spread ${
      (((best[1] - best[0]) / ((best[0] + best[1]) / 2)) * 1e4).toFixed(2)} bp`
    : "";
}

const SHORT_NAMES = { binance: "BIN", binance_futures: "BINF", coinbase: "CB", kraken: "KRK", htx: "HTX",
                      bitfinex: "BFX", okx: "OKX", bybit: "BYB", kucoin: "KUC", bitstamp: "BST", gateio: "GATE" };

function shortName(name) {
  return SHORT_NAMES[name] || name.slice(0, 4).toUpperCase();
}

function formatSize(size) {
  return size >= 1000 ? size.toFixed(0) : size >= 1 ? size.toFixed(3) : size.toPrecision(3);
}

// ---- signals -----------------------------------------------------------------------------

function renderSignals() {
  const list = $("#signals");
  list.replaceChildren(...state.signals.slice(0, 40).map((signal) => {
    const item = document.createElement("li");
    item.dataset.kind = signal.kind;
    item.dataset.state = signal.state;
    const time = new Date(signal.ts / 1e6).toISOString().slice(11, 19);
    item.innerHTML = `<span class="time">${time}</span><span class="kind">${signal.kind}</span>
      <span class="state">${signal.state}</span><span class="confidence">${
      (100 * (signal.confidence || 0)).toFixed(0)}%</span><div class="reason"></div>`;
    item.querySelector(".reason").textContent = signal.reason || "";
    return item;
  }));
  $("#signals-empty").hidden = state.signals.length > 0;
}

// ---- wiring --------------------------------------------------------------------------------

$("#instrument").addEventListener("change", (event) => subscribe(event.target.value));

function frame() {
  heatmap.draw();
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
setInterval(() => { if (state.health) renderHealth(); }, 1000);
connect();

// Read-only hooks for tests and the curious (browser console): what is on screen.
window.coby = {
  instrument: () => state.instrument && state.instrument.instrument,
  exchanges: () => (state.instrument ? state.instrument.exchanges.slice() : []),
  columnsReceived: () => state.columnsReceived,
  columnsShown: () => heatmap.drawn.columns,
  drawnSizeByExchange: () => Object.fromEntries(heatmap.exchanges.map((name, e) => [name, heatmap.drawn.byExchange[e] || 0])),
};
