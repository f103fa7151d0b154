// Drives an SDK-built policy module the way the host does (ABI v1 call
// order) through many endpoint-set changes, and checks what the host relies
// on: sy_alloc blocks are non-zero, 8-aligned and do not overlap the live
// context; picks stay in range; memory stays bounded while tables churn.
//
//   node sdk_churn.mjs MODULE.wasm ROUNDS      prints one JSON line
import { readFileSync } from "node:fs";

const [file, roundsArg] = process.argv.slice(2);
const rounds = Number(roundsArg || 2000);
let errors = [];
const imports = {
  switchyard: {
    now_ns: () => 5_000_000_000n,
    random_u64: () => 0x9e3779b97f4a7c15n,
    log: () => {},
    set_error: (p, n) => errors.push(n),
    request_attr: () => -1,
  },
};
const { instance } = await WebAssembly.instantiate(readFileSync(file), imports);
const x = instance.exports;
const mem = () => new DataView(x.memory.buffer);
const fail = (msg) => { console.log(JSON.stringify({ ok: false, error: msg })); process.exit(1); };

if (x.sy_abi_version() !== 1) fail("sy_abi_version is not 1");
const config = new TextEncoder().encode("{}");
const cp = x.sy_alloc(config.length);
if (cp === 0 || cp % 8) fail(`config block ${cp}`);
new Uint8Array(x.memory.buffer, cp, config.length).set(config);
if (x.sy_init(cp, config.length) !== 0) fail("sy_init rejected {}");
const ctx = x.sy_alloc(64);
if (ctx === 0 || ctx % 8) fail(`context block ${ctx}`);
const startBytes = x.memory.buffer.byteLength;
let seed = 12345;
// xorshift32: deterministic, so a failure replays.
const rand = (n) => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed % n; };
const picks = {};
for (let round = 0; round < rounds; round++) {
  const count = rand(4) === 0 ? 0 : 1 + rand(rand(2) ? 2000 : 60);
  const names = Array.from({ length: count }, (_, i) => `web-${i}`);
  const strings = names.reduce((s, n) => s + n.length, 0);
  const size = count * 64 + strings;
  const t = x.sy_alloc(size);
  if (t === 0 || t % 8) fail(`round ${round}: table block ${t}`);
  if (t < ctx + 64 && ctx < t + size) fail(`round ${round}: table ${t}+${size} overlaps the context ${ctx}`);
  let dv = mem();
  let off = count * 64;
  names.forEach((name, i) => {
    const r = t + i * 64;
    for (let k = 0; k < 64; k++) dv.setUint8(r + k, 0);
    dv.setUint8(r, 4);
    dv.setUint8(r + 1, 3);
    dv.setUint16(r + 2, 8080, true);
    dv.setUint32(r + 4, 1, true);
    dv.setUint32(r + 8, 0x0af40000 + i);
    dv.setUint32(r + 24, off, true);
    dv.setUint16(r + 28, name.length, true);
    dv.setUint32(r + 44, rand(5), true); // active
    new Uint8Array(x.memory.buffer, t + off, name.length).set(new TextEncoder().encode(name));
    off += name.length;
  });
  x.sy_endpoints(t, count);
  for (let k = 0; k < 3; k++) {
    dv = mem();
    for (let b = 0; b < 64; b++) dv.setUint8(ctx + b, 0);
    dv.setUint8(ctx, 4);
    dv.setBigUint64(ctx + 40, 5_000_000_000n, true);
    dv.setUint32(ctx + 56, count, true);
    const pick = x.sy_pick(ctx);
    if (count === 0 ? pick !== -1 : (pick < 0 || pick >= count)) fail(`round ${round}: pick ${pick} of ${count}`);
    picks[pick] = (picks[pick] || 0) + 1;
  }
}
console.log(JSON.stringify({ ok: true, startBytes, endBytes: x.memory.buffer.byteLength,
                             distinctPicks: Object.keys(picks).length, errors: errors.length }));
