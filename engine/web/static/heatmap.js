// The heatmap: time on x (one column per update, newest on the right), price on y, colour =
// resting size of the exchanges switched on, the consolidated best bid/ask line of those
// exchanges, and trades as bubbles sized by volume.

import { INCLUDED_BIT } from "./stream.js";

const IN_SYNC = 3;
const AXIS_WIDTH = 76;
const TIME_AXIS_HEIGHT = 20;
const BUBBLE_SPACING = 9;
const MIN_COLUMNS = 300;  // the time axis starts this wide and grows with the history, up to maxColumns

// Bookmap-like scale: dark blue for a little size, through cyan and yellow, to white for walls.
const STOPS = [
  [0.0, [8, 10, 30]], [0.15, [10, 40, 110]], [0.35, [0, 130, 200]], [0.55, [40, 200, 160]],
  [0.72, [230, 220, 40]], [0.88, [255, 120, 20]], [1.0, [255, 255, 255]],
];
const LUT = buildLut();

function buildLut() {
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const x = i / 255;
    let k = 0;
    while (k < STOPS.length - 2 && x > STOPS[k + 1][0]) k++;
    const [x0, c0] = STOPS[k];
    const [x1, c1] = STOPS[k + 1];
    const t = Math.min(1, Math.max(0, (x - x0) / (x1 - x0)));
    for (let j = 0; j < 3; j++) lut[i * 4 + j] = c0[j] + (c1[j] - c0[j]) * t;
    lut[i * 4 + 3] = 255;
  }
  return lut;
}

export class Heatmap {
  constructor(canvas, tooltip) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.context = canvas.getContext("2d");
    this.image = document.createElement("canvas");
    this.columns = [];
    this.maxColumns = 1200;
    this.enabled = [];
    this.exchanges = [];
    this.zoom = 0.75;
    this.viewLow = null;  // lowest absolute row shown
    this.decimals = 2;
    this.drawn = { columns: 0, byExchange: [] };
    this.dirty = true;
    canvas.addEventListener("wheel", (event) => this.onWheel(event), { passive: false });
    canvas.addEventListener("mousemove", (event) => this.onHover(event));
    canvas.addEventListener("mouseleave", () => { this.tooltip.hidden = true; });
    new ResizeObserver(() => { this.dirty = true; this.draw(); }).observe(canvas);
  }

  reset(exchanges, decimals) {
    this.columns = [];
    this.exchanges = exchanges;
    this.enabled = exchanges.map(() => true);
    this.viewLow = null;
    this.decimals = decimals;
    this.dirty = true;
  }

  setEnabled(index, on) {
    this.enabled[index] = on;
    for (const column of this.columns) column.totals = null;
    this.dirty = true;
  }

  push(column) {
    column.totals = null;
    this.columns.push(column);
    if (this.columns.length > this.maxColumns) this.columns.splice(0, this.columns.length - this.maxColumns);
    this.dirty = true;
  }

  totals(column) {
    if (!column.totals) {
      const { rows, exchanges, sizes } = column;
      const totals = new Float32Array(rows);
      for (let r = 0; r < rows; r++) {
        let sum = 0;
        for (let e = 0; e < exchanges; e++) if (this.enabled[e]) sum += sizes[r * exchanges + e];
        totals[r] = sum;
      }
      column.totals = totals;
    }
    return column.totals;
  }

  // The consolidated touch of the exchanges switched on (those whose book is in the consolidated one).
  touch(column) {
    let bid = 0, ask = 0;
    for (let e = 0; e < column.exchanges; e++) {
      if (!this.enabled[e] || !(column.state[e] & INCLUDED_BIT)) continue;
      if (column.bestBid[e] > 0 && column.bestBid[e] > bid) bid = column.bestBid[e];
      if (column.bestAsk[e] > 0 && (ask === 0 || column.bestAsk[e] < ask)) ask = column.bestAsk[e];
    }
    return { bid, ask };
  }

  onWheel(event) {
    event.preventDefault();
    this.zoom = Math.min(4, Math.max(0.125, this.zoom * (event.deltaY > 0 ? 1.15 : 1 / 1.15)));
    this.dirty = true;
    this.draw();
  }

  geometry() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(this.canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(this.canvas.clientHeight * ratio));
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    const plotWidth = width - AXIS_WIDTH * ratio;
    const plotHeight = height - TIME_AXIS_HEIGHT * ratio;
    const last = this.columns[this.columns.length - 1];
    const viewRows = Math.max(8, Math.round((last ? last.rows : 256) * this.zoom));
    const visible = Math.min(this.maxColumns, Math.max(MIN_COLUMNS, this.columns.length));
    const columnPixels = plotWidth / visible;
    return { ratio, width, height, plotWidth, plotHeight, viewRows, visible, columnPixels };
  }

  // The median of the mids of the exchanges switched on: one dislocated venue crossing the
  // consolidated book does not drag the view off the rest of the market.
  marketMid(column) {
    const mids = [];
    for (let e = 0; e < column.exchanges; e++) {
      if (this.enabled[e] && column.bestBid[e] > 0 && column.bestAsk[e] > 0) mids.push((column.bestBid[e] + column.bestAsk[e]) / 2);
    }
    if (!mids.length) return column.firstRow * column.step + (column.rows * column.step) / 2;
    mids.sort((a, b) => a - b);
    const middle = mids.length >> 1;
    return mids.length % 2 ? mids[middle] : (mids[middle - 1] + mids[middle]) / 2;
  }

  follow(last, viewRows) {
    const mid = this.marketMid(last);
    const midRow = mid / last.step;
    if (this.viewLow === null || midRow < this.viewLow + 0.2 * viewRows || midRow > this.viewLow + 0.8 * viewRows
        || this.lastViewRows !== viewRows) {
      this.viewLow = Math.floor(midRow - viewRows / 2);
      this.lastViewRows = viewRows;
    }
  }

  draw() {
    if (!this.dirty) return;
    this.dirty = false;
    const g = this.geometry();
    const ctx = this.context;
    ctx.fillStyle = "#05070f";
    ctx.fillRect(0, 0, g.width, g.height);
    const last = this.columns[this.columns.length - 1];
    if (!last) {
      this.drawn = { columns: 0, byExchange: this.exchanges.map(() => 0) };
      return;
    }
    this.follow(last, g.viewRows);
    const shown = this.columns.slice(-g.visible);
    const offset = g.visible - shown.length;  // empty columns on the left until history fills the width
    const image = this.paint(shown, g.viewRows, offset, g.visible);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, 0, 0, g.visible, g.viewRows, 0, 0, g.plotWidth, g.plotHeight);
    const x = (i) => (offset + i + 0.5) * g.columnPixels;
    const y = (price) => g.plotHeight - (price / last.step - this.viewLow) * (g.plotHeight / g.viewRows);
    this.drawTouch(shown, x, y, g);
    this.drawTrades(shown, x, y, g);
    this.drawAxes(last, shown, x, g);
  }

  // One pixel per cell (column × row), scaled up when drawn; colour from log(size) over a robust maximum.
  paint(shown, viewRows, offset, visible) {
    const image = this.image;
    if (image.width !== visible || image.height !== viewRows) {
      image.width = visible;
      image.height = viewRows;
    }
    const context = image.getContext("2d");
    const pixels = context.createImageData(visible, viewRows);
    const data = pixels.data;
    const sample = [];
    const byExchange = this.exchanges.map(() => 0);
    for (const column of shown) {
      const totals = this.totals(column);
      for (let r = 0; r < totals.length; r++) if (totals[r] > 0) sample.push(totals[r]);
      for (let e = 0; e < column.exchanges; e++) {
        if (!this.enabled[e]) continue;
        for (let r = 0; r < column.rows; r++) byExchange[e] += column.sizes[r * column.exchanges + e];
      }
    }
    sample.sort((a, b) => a - b);
    const at = (q) => Math.log(sample.length ? sample[Math.floor(q * (sample.length - 1))] : 1);
    const [low, median, high] = [at(0.05), at(0.5), at(0.995)];
    // the median cell is blue-cyan, the largest half a percent yellow to white: walls stand out
    const level = (size) => {
      const x = Math.log(size);
      const f = x <= median ? 0.4 * (x - low) / (median - low || 1) : 0.4 + 0.6 * (x - median) / (high - median || 1);
      return Math.min(255, Math.max(28, Math.round(255 * f)));
    };
    for (let p = 0; p < data.length; p += 4) {
      data[p] = 5; data[p + 1] = 7; data[p + 2] = 15; data[p + 3] = 255;
    }
    shown.forEach((column, i) => {
      const totals = this.totals(column);
      const px = offset + i;
      for (let v = 0; v < viewRows; v++) {
        const r = this.viewLow + v - column.firstRow;
        if (r < 0 || r >= column.rows) continue;
        const size = totals[r];
        if (!(size > 0)) continue;
        const colour = level(size) * 4;
        const pixel = ((viewRows - 1 - v) * visible + px) * 4;
        data[pixel] = LUT[colour];
        data[pixel + 1] = LUT[colour + 1];
        data[pixel + 2] = LUT[colour + 2];
      }
    });
    context.putImageData(pixels, 0, 0);
    this.drawn = { columns: shown.length, byExchange };
    return image;
  }

  // The consolidated touch of the exchanges switched on. Where it is beyond the price axis (a
  // venue dislocated far from the others crosses the book), the line breaks and a tick on the
  // edge says where it went, rather than a stroke across the whole picture.
  drawTouch(shown, x, y, g) {
    const ctx = this.context;
    for (const [key, colour] of [["bid", "#35e07a"], ["ask", "#ff4d5e"]]) {
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      ctx.lineWidth = 1.5 * g.ratio;
      ctx.beginPath();
      let open = false;
      shown.forEach((column, i) => {
        const price = this.touch(column)[key];
        const px = x(i), py = price ? y(price) : NaN;
        if (!(py >= 0 && py <= g.plotHeight)) {
          if (price) ctx.fillRect(px - g.ratio, py < 0 ? 0 : g.plotHeight - 4 * g.ratio, 2 * g.ratio, 4 * g.ratio);
          open = false;
          return;
        }
        if (open) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        open = true;
      });
      ctx.stroke();
    }
  }

  // One bubble per aggressor side per group of columns (bubbles at least BUBBLE_SPACING px apart),
  // at the volume-weighted price, its area proportional to the volume.
  drawTrades(shown, x, y, g) {
    const ctx = this.context;
    const group = Math.max(1, Math.ceil((BUBBLE_SPACING * g.ratio) / g.columnPixels));
    const bubbles = [];
    for (let start = 0; start < shown.length; start += group) {
      const sides = { 1: [0, 0], 2: [0, 0] };
      for (let i = start; i < Math.min(start + group, shown.length); i++) {
        for (const trade of shown[i].trades) {
          if (!this.enabled[trade.exchange] || !sides[trade.side]) continue;
          sides[trade.side][0] += trade.price * trade.size;
          sides[trade.side][1] += trade.size;
        }
      }
      for (const side of [1, 2]) {
        const [notional, size] = sides[side];
        if (size > 0) bubbles.push({ at: start + (Math.min(group, shown.length - start) - 1) / 2, side,
                                     price: notional / size, size });
      }
    }
    const sizes = bubbles.map((bubble) => bubble.size).sort((a, b) => a - b);
    const typical = sizes.length ? sizes[Math.floor(0.5 * (sizes.length - 1))] : 1;
    for (const bubble of bubbles) {
      const radius = Math.min(18, 2 + 3 * Math.sqrt(bubble.size / typical)) * g.ratio;
      ctx.beginPath();
      ctx.arc(x(bubble.at), y(bubble.price), radius, 0, 2 * Math.PI);
      ctx.fillStyle = bubble.side === 1 ? "rgba(53, 224, 122, 0.35)" : "rgba(255, 77, 94, 0.35)";
      ctx.fill();
      ctx.strokeStyle = bubble.side === 1 ? "rgba(140, 255, 190, 0.9)" : "rgba(255, 160, 170, 0.9)";
      ctx.lineWidth = g.ratio;
      ctx.stroke();
    }
  }

  drawAxes(last, shown, x, g) {
    const ctx = this.context;
    ctx.fillStyle = "#0b0f1c";
    ctx.fillRect(g.plotWidth, 0, g.width - g.plotWidth, g.height);
    ctx.fillRect(0, g.plotHeight, g.width, g.height - g.plotHeight);
    ctx.fillStyle = "#9aa6c4";
    ctx.font = `${11 * g.ratio}px ui-monospace, monospace`;
    ctx.textBaseline = "middle";
    const rowPixels = g.plotHeight / g.viewRows;
    const every = Math.max(1, Math.ceil((18 * g.ratio) / rowPixels));
    const first = Math.ceil(this.viewLow / every) * every;
    for (let row = first; row < this.viewLow + g.viewRows; row += every) {
      const py = g.plotHeight - (row - this.viewLow + 0.5) * rowPixels;
      ctx.fillText((row * last.step).toFixed(this.decimals), g.plotWidth + 6 * g.ratio, py);
    }
    const { bid, ask } = this.touch(last);
    const bidY = g.plotHeight - (bid / last.step - this.viewLow) * rowPixels;
    const askY = g.plotHeight - (ask / last.step - this.viewLow) * rowPixels;
    const apart = Math.max(0, 17 * g.ratio - (bidY - askY)) / 2;  // labels of a tight or crossed touch side by side
    for (const [price, colour, py] of [[bid, "#35e07a", bidY + apart], [ask, "#ff4d5e", askY - apart]]) {
      if (!price) continue;
      ctx.fillStyle = colour;
      ctx.fillRect(g.plotWidth, py - 8 * g.ratio, g.width - g.plotWidth, 16 * g.ratio);
      ctx.fillStyle = "#05070f";
      ctx.fillText(price.toFixed(this.decimals), g.plotWidth + 6 * g.ratio, py);
    }
    ctx.fillStyle = "#9aa6c4";
    ctx.textBaseline = "top";
    const msPerPixel = shown.length > 1 ? (shown[shown.length - 1].tsMs - shown[0].tsMs) / ((shown.length - 1) * g.columnPixels) : 100;
    const interval = [5, 10, 15, 30, 60, 120, 300, 600].find((s) => (s * 1000) / msPerPixel >= 90 * g.ratio) || 600;
    let lastLabel = null;
    shown.forEach((column, i) => {
      const slot = Math.floor(column.tsMs / (interval * 1000));
      if (slot === lastLabel) return;
      const first = lastLabel === null;
      lastLabel = slot;
      if (first) return;
      const label = new Date(slot * interval * 1000).toISOString().slice(11, 19);
      ctx.fillText(label, x(i) - 24 * g.ratio, g.plotHeight + 4 * g.ratio);
    });
  }

  onHover(event) {
    const last = this.columns[this.columns.length - 1];
    if (!last || this.viewLow === null) return;
    const g = this.geometry();
    const rect = this.canvas.getBoundingClientRect();
    const px = (event.clientX - rect.left) * g.ratio, py = (event.clientY - rect.top) * g.ratio;
    if (px >= g.plotWidth || py >= g.plotHeight) { this.tooltip.hidden = true; return; }
    const shown = this.columns.slice(-g.visible);
    const index = Math.floor(px / g.columnPixels) - (g.visible - shown.length);
    const column = shown[index];
    if (!column) { this.tooltip.hidden = true; return; }
    const row = this.viewLow + Math.floor((g.plotHeight - py) / (g.plotHeight / g.viewRows));
    const r = row - column.firstRow;
    const parts = [];
    let total = 0;
    if (r >= 0 && r < column.rows) {
      for (let e = 0; e < column.exchanges; e++) {
        const size = column.sizes[r * column.exchanges + e];
        if (this.enabled[e] && size > 0) { parts.push(`${this.exchanges[e]} ${size.toPrecision(4)}`); total += size; }
      }
    }
    const low = (row * column.step).toFixed(this.decimals);
    const time = new Date(column.tsMs).toISOString().slice(11, 23);
    this.tooltip.textContent = `${time}  ${low}  size ${total.toPrecision(4)}${parts.length ? "\n" + parts.join("\n") : ""}`;
    this.tooltip.style.left = `${event.clientX - rect.left + 14}px`;
    this.tooltip.style.top = `${event.clientY - rect.top + 14}px`;
    this.tooltip.hidden = false;
  }
}
