// The dashboard's binary stream (docs/api.md, "WebSocket"): the same reader as
// engine/web/stream.py's ColumnDecoder and decode_ladder, byte for byte.

export const COLUMN_FRAME = 1;
export const LADDER_FRAME = 2;
const KEYFRAME = 0x01;
const WIDE_INDICES = 0x02;
export const INCLUDED_BIT = 0x80;
const COLUMN_HEADER = 48;
const LADDER_HEADER = 32;
const TRADE_BYTES = 16;

export class ProtocolError extends Error {}

export function frameType(buffer) {
  return new DataView(buffer).getUint8(0);
}

export function frameInstrument(buffer) {
  return new DataView(buffer).getUint16(2, true);
}

// Rebuilds the columns of one instrument; a delta needs the column just before it.
export class ColumnDecoder {
  constructor() {
    this.last = null;
  }

  apply(buffer) {
    const view = new DataView(buffer);
    if (buffer.byteLength < COLUMN_HEADER) throw new ProtocolError("short column frame");
    const flags = view.getUint8(1);
    const sequence = view.getUint32(4, true);
    const tsMs = view.getFloat64(8, true);
    const firstRow = Number(view.getBigInt64(16, true));
    const step = view.getFloat64(24, true);
    const rows = view.getUint16(32, true);
    const exchanges = view.getUint16(34, true);
    const tradeCount = view.getUint16(36, true);
    const count = view.getUint32(40, true);
    let offset = COLUMN_HEADER;
    const bestBid = new Float64Array(buffer.slice(offset, offset + 8 * exchanges));
    offset += 8 * exchanges;
    const bestAsk = new Float64Array(buffer.slice(offset, offset + 8 * exchanges));
    offset += 8 * exchanges;
    const state = new Uint8Array(buffer.slice(offset, offset + exchanges));
    offset += exchanges + ((8 - (exchanges % 8)) % 8);
    const trades = [];
    for (let i = 0; i < tradeCount; i++, offset += TRADE_BYTES) {
      trades.push({
        price: view.getFloat64(offset, true),
        size: view.getFloat32(offset + 8, true),
        exchange: view.getUint8(offset + 12),
        side: view.getUint8(offset + 13),  // 1: buyer took the ask, 2: seller hit the bid
        count: view.getUint16(offset + 14, true),
      });
    }
    let sizes;
    if (flags & KEYFRAME) {
      if (count !== rows * exchanges) throw new ProtocolError("keyframe of the wrong size");
      sizes = new Float32Array(buffer.slice(offset, offset + 4 * count));
      offset += 4 * count;
    } else {
      const last = this.last;
      if (!last || ((last.sequence + 1) >>> 0) !== sequence) {
        throw new ProtocolError(`delta ${sequence} does not follow ${last ? last.sequence : "nothing"}`);
      }
      const wide = flags & WIDE_INDICES;
      const width = wide ? 4 : 2;
      const indices = wide
        ? new Uint32Array(buffer.slice(offset, offset + 4 * count))
        : new Uint16Array(buffer.slice(offset, offset + 2 * count));
      offset += width * count + ((4 - ((width * count) % 4)) % 4);
      const values = new Float32Array(buffer, offset, count);
      offset += 4 * count;
      sizes = moved(last.sizes, rows, exchanges, last.firstRow, firstRow);
      for (let i = 0; i < count; i++) sizes[indices[i]] = values[i];
    }
    if (offset !== buffer.byteLength) throw new ProtocolError("column frame of the wrong length");
    this.last = { sequence, tsMs, firstRow, step, rows, exchanges, sizes, bestBid, bestAsk, state, trades };
    return this.last;
  }
}

// A window of sizes starting at fromRow, as seen from a window starting at toRow.
function moved(sizes, rows, exchanges, fromRow, toRow) {
  const shift = toRow - fromRow;
  const result = new Float32Array(rows * exchanges);
  if (Math.abs(shift) < rows) {
    if (shift >= 0) result.set(sizes.subarray(shift * exchanges), 0);
    else result.set(sizes.subarray(0, (rows + shift) * exchanges), -shift * exchanges);
  }
  return result;
}

export function decodeLadder(buffer) {
  const view = new DataView(buffer);
  const bids = view.getUint16(4, true);
  const asks = view.getUint16(6, true);
  const exchanges = view.getUint16(8, true);
  const generation = view.getUint32(12, true);
  const tsMs = view.getFloat64(16, true);
  const mid = view.getFloat64(24, true);
  let offset = LADDER_HEADER;
  const bidPrice = new Float64Array(buffer, offset, bids);
  offset += 8 * bids;
  const askPrice = new Float64Array(buffer, offset, asks);
  offset += 8 * asks;
  const bidSizes = new Float32Array(buffer, offset, bids * exchanges);
  offset += 4 * bids * exchanges;
  const askSizes = new Float32Array(buffer, offset, asks * exchanges);
  return { generation, tsMs, mid, exchanges, bidPrice, askPrice, bidSizes, askSizes };
}
