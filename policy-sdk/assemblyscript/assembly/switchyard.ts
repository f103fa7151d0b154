// Switchyard policy SDK for AssemblyScript: ABI v1 (policy-sdk/ABI.md).
//
// A policy's entry file re-exports the shared exports and defines its own:
//
//   export { sy_abi_version, sy_alloc, sy_endpoints } from "../assembly/switchyard";
//   export function sy_init(configPtr: i32, configLen: i32): i32 { ... }
//   export function sy_pick(ctxPtr: i32): i32 { ... }
//   export function sy_outcome(index: i32, result: i32, latencyNs: i64): void { ... } // optional
//
// and builds with `asc --runtime minimal --use abort=` (no `env` imports:
// ABI.md allows only the `switchyard` ones). Nothing here allocates a
// managed object: the records are read in place through unmanaged classes,
// strings are compared as bytes, and sy_alloc uses the runtime's unmanaged
// heap (heap.alloc / heap.free), so a policy needs no garbage collection.

export const ABI_VERSION: i32 = 1;

// ------------------------------------------------------------------ imports

@external("switchyard", "now_ns")
export declare function now_ns(): i64;

@external("switchyard", "random_u64")
export declare function random_u64(): i64;

@external("switchyard", "log")
declare function host_log(level: i32, ptr: usize, len: i32): void;

@external("switchyard", "set_error")
declare function host_set_error(ptr: usize, len: i32): void;

@external("switchyard", "request_attr")
declare function host_request_attr(kind: i32, namePtr: usize, nameLen: i32, outPtr: usize, outCap: i32): i32;

// Log levels of log().
export const LOG_ERROR: i32 = 0;
export const LOG_WARN: i32 = 1;
export const LOG_INFO: i32 = 2;
export const LOG_DEBUG: i32 = 3;

// request_attr kinds.
export const ATTR_METHOD: i32 = 0;
export const ATTR_AUTHORITY: i32 = 1;
export const ATTR_PATH: i32 = 2;
export const ATTR_HEADER: i32 = 3;
export const ATTR_SCHEME: i32 = 4;

// Endpoint flags.
export const FLAG_READY: u8 = 0x01;
export const FLAG_SERVING: u8 = 0x02;
export const FLAG_TERMINATING: u8 = 0x04;
export const FLAG_LOCAL: u8 = 0x08;
export const FLAG_SAME_ZONE: u8 = 0x10;

// Context modes.
export const MODE_L4: u8 = 0;
export const MODE_L7: u8 = 1;

// A static 1 KiB buffer for UTF-8 text (log and error messages).
const TEXT: usize = memory.data(1024);

function utf8(msg: string): i32 {
  // encodeUnsafe writes into memory we own without allocating; messages
  // longer than the buffer are cut (at most 3 bytes per UTF-16 unit).
  const units = min(msg.length, 1024 / 3);
  return <i32>String.UTF8.encodeUnsafe(changetype<usize>(msg), units, TEXT, false);
}

// Logs a message through the host (rate-limited there).
export function log(level: i32, msg: string): void {
  host_log(level, TEXT, utf8(msg));
}

// The reason for a non-zero sy_init result (the host keeps 1 KiB).
export function setError(msg: string): void {
  host_set_error(TEXT, utf8(msg));
}

// setError with a message made of `msg` and `len` bytes at `ptr` (a
// config's field name, for instance); cut at 1 KiB.
export function setErrorWith(msg: string, ptr: usize, len: u32): void {
  const n = <u32>utf8(msg);
  const extra = min(len, 1024 - n);
  memory.copy(TEXT + n, ptr, extra);
  host_set_error(TEXT, <i32>(n + extra));
}

// The raw request_attr import: copies min(length, outCap) bytes of the
// attribute to outPtr and returns its full length, or -1 when absent
// (always in L4 mode). `name` (kind 3) is a lowercase header name in memory.
export function requestAttr(kind: i32, namePtr: usize, nameLen: i32, outPtr: usize, outCap: i32): i32 {
  return host_request_attr(kind, namePtr, nameLen, outPtr, outCap);
}

// A uniformly random number below n (0 when n is 0).
export function randomBelow(n: u32): u32 {
  return <u32>(((<u64>random_u64() >> 32) * <u64>n) >> 32);
}

// ------------------------------------------------------------------ records

// One 64-byte record of the endpoint table, read in place
// (changetype<Endpoint>(pointer)). The live fields (active, failures,
// lastFailureMs, ewmaNs) are rewritten by the host between calls.
@unmanaged
export class Endpoint {
  family: u8;         // 0: 4 or 6
  flags: u8;          // 1: FLAG_*
  port: u16;          // 2: target port, host order
  weight: u32;        // 4: 1 today
  address0: u64;      // 8: address bytes 0-7 (IPv4 in bytes 0-3, network order)
  address1: u64;      // 16: address bytes 8-15
  nameOff: u32;       // 24
  nameLen: u16;       // 28
  nodeLen: u16;       // 30
  nodeOff: u32;       // 32
  zoneOff: u32;       // 36
  zoneLen: u16;       // 40
  reserved: u16;      // 42
  active: u32;        // 44, live
  failures: u32;      // 48, live
  lastFailureMs: u32; // 52, live
  ewmaNs: u64;        // 56, live
}

// The 64-byte context of a pick: changetype<Context>(ctxPtr).
@unmanaged
export class Context {
  family: u8;         // 0: of the client, 4 or 6
  mode: u8;           // 1: MODE_L4 or MODE_L7
  clientPort: u16;    // 2
  frontendPort: u16;  // 4
  attempt: u16;       // 6: 0 first pick, 1.. retries
  clientAddr0: u64;   // 8
  clientAddr1: u64;   // 16
  frontendAddr0: u64; // 24
  frontendAddr1: u64; // 32
  nowNs: u64;         // 40
  tried: u64;         // 48: bit i, endpoint i (< 64) already failed
  count: u32;         // 56
  reserved: u32;      // 60

  // Whether endpoint i already failed for this connection.
  isTried(i: u32): bool {
    return i < 64 && ((this.tried >> <u64>i) & 1) != 0;
  }
}

export const RECORD_SIZE: u32 = 64;

// ------------------------------------------------------------ buffers

// Blocks sy_alloc handed out and not freed yet: pointer and size pairs in a
// static array (a policy holds few at once: config, context, one or two
// tables). A pointer the host hands back is used only if it is listed here.
const MAX_BLOCKS: i32 = 32;
const BLOCKS: usize = memory.data(MAX_BLOCKS * 8);
let tablePtr: usize = 0;
let tableSize: u32 = 0;
let tableCount: u32 = 0;

function blockSize(ptr: usize): i64 {
  if (ptr == 0) return -1;
  for (let i = 0; i < MAX_BLOCKS; i++) {
    if (<usize>load<u32>(BLOCKS + i * 8) == ptr) return <i64>load<u32>(BLOCKS + i * 8, 4);
  }
  return -1;
}

// Frees a block from sy_alloc (the config after sy_init, for instance);
// other pointers are ignored.
export function free(ptr: usize): void {
  if (ptr == 0) return;
  for (let i = 0; i < MAX_BLOCKS; i++) {
    if (<usize>load<u32>(BLOCKS + i * 8) == ptr) {
      store<u32>(BLOCKS + i * 8, 0);
      heap.free(ptr);
      return;
    }
  }
}

export function sy_abi_version(): i32 {
  return ABI_VERSION;
}

export function sy_alloc(size: i32): i32 {
  if (size < 0) return 0;
  let slot = -1;
  for (let i = 0; i < MAX_BLOCKS; i++) {
    if (load<u32>(BLOCKS + i * 8) == 0) {
      slot = i;
      break;
    }
  }
  if (slot < 0) return 0;
  const want = max<usize>(<usize>size, 1);
  // heap.alloc aligns to 16 (ABI.md asks for 8).
  const ptr = heap.alloc(want);
  store<u32>(BLOCKS + slot * 8, <u32>ptr);
  store<u32>(BLOCKS + slot * 8, <u32>want, 4);
  return <i32>ptr;
}

// Called after every sy_endpoints with table()/count() already the new set;
// set it to precompute (onEndpoints = () => { ... }).
export let onEndpoints: () => void = () => {};

export function sy_endpoints(ptr: i32, count: i32): void {
  const previous = tablePtr;
  const size = blockSize(<usize>ptr);
  if (size >= 0 && count >= 0 && <i64>count * RECORD_SIZE <= size) {
    tablePtr = <usize>ptr;
    tableSize = <u32>size;
    tableCount = <u32>count;
  } else {
    tablePtr = 0;
    tableSize = 0;
    tableCount = 0;
    if (count > 0) log(LOG_ERROR, "sy_endpoints: the table is not a block from sy_alloc");
  }
  if (previous != 0 && previous != tablePtr) free(previous);
  onEndpoints();
}

// Endpoints in the current table.
export function count(): u32 {
  return tableCount;
}

// Endpoint i of the current table (i < count()).
export function endpoint(i: u32): Endpoint {
  return changetype<Endpoint>(tablePtr + <usize>i * RECORD_SIZE);
}

// The context record at ctxPtr.
export function context(ctxPtr: i32): Context {
  return changetype<Context>(<usize>ctxPtr);
}

// ------------------------------------------------------------ strings

function inTable(off: u32, len: u32): bool {
  return tablePtr != 0 && len != 0 && off <= tableSize && len <= tableSize - off;
}

// Whether endpoint i's Pod name (or node, zone) starts with the len bytes
// at ptr. Absent or out-of-bounds strings never match.
export function nameStartsWith(i: u32, ptr: usize, len: u32): bool {
  const e = endpoint(i);
  return fieldStartsWith(e.nameOff, e.nameLen, ptr, len);
}
export function nodeStartsWith(i: u32, ptr: usize, len: u32): bool {
  const e = endpoint(i);
  return fieldStartsWith(e.nodeOff, e.nodeLen, ptr, len);
}
export function zoneStartsWith(i: u32, ptr: usize, len: u32): bool {
  const e = endpoint(i);
  return fieldStartsWith(e.zoneOff, e.zoneLen, ptr, len);
}

function fieldStartsWith(off: u32, flen: u16, ptr: usize, len: u32): bool {
  if (!inTable(off, flen) || len > <u32>flen) return false;
  return memory.compare(tablePtr + off, ptr, len) == 0;
}

// Copies the config handed to sy_init into out (at most cap bytes), frees
// it, and returns its length (which may exceed cap: it did not fit).
export function takeConfig(configPtr: i32, configLen: i32, out: usize, cap: u32): u32 {
  const size = blockSize(<usize>configPtr);
  let len: u32 = configLen > 0 ? <u32>configLen : 0;
  if (size < 0 || <i64>len > size) len = 0;
  memory.copy(out, <usize>configPtr, min(len, cap));
  free(<usize>configPtr);
  return len;
}

// ------------------------------------------------------------ flat JSON

// In a flat JSON object ({"key": "value", "n": 10}: strings, numbers,
// true/false/null, no nesting) at json/len, the value of `key` (ASCII): a
// string without its quotes (only \" and \\ escapes), anything else as
// written, copied to out (at most cap bytes). Returns its length; -1 when
// the key is absent; -2 when the text is not such an object or the value
// does not fit. With `known` set, -3 when a key is not among the
// comma-separated `known` names (for rejecting typos); that key's raw text
// is then at jsonBadKey / jsonBadKeyLen.
export let jsonBadKey: usize = 0;
export let jsonBadKeyLen: u32 = 0;

export function jsonValue(json: usize, len: u32, key: string, out: usize, cap: u32, known: string = ""): i32 {
  let i: u32 = skipWs(json, 0, len);
  if (i >= len || load<u8>(json + i) != 0x7b) return -2; // {
  i = skipWs(json, i + 1, len);
  let result: i32 = -1;
  if (i < len && load<u8>(json + i) == 0x7d) { // }
    i++;
  } else {
    while (true) {
      // key
      if (i >= len || load<u8>(json + i) != 0x22) return -2;
      const ks = i + 1;
      const ke = stringEnd(json, ks, len);
      if (ke < 0) return -2;
      i = skipWs(json, <u32>ke + 1, len);
      if (i >= len || load<u8>(json + i) != 0x3a) return -2; // :
      i = skipWs(json, i + 1, len);
      // value
      let vs: u32, ve: u32;
      if (i < len && load<u8>(json + i) == 0x22) {
        vs = i + 1;
        const end = stringEnd(json, vs, len);
        if (end < 0) return -2;
        ve = <u32>end;
        i = ve + 1;
      } else {
        vs = i;
        while (i < len && isToken(load<u8>(json + i))) i++;
        ve = i;
        if (ve == vs) return -2;
      }
      if (known.length > 0 && !listed(known, json + ks, <u32>ke - ks)) {
        jsonBadKey = json + ks;
        jsonBadKeyLen = <u32>ke - ks;
        return -3;
      }
      if (result == -1 && rawEquals(json + ks, <u32>ke - ks, key)) {
        result = unescape(json + vs, ve - vs, out, cap);
        if (result < 0) return -2;
      }
      i = skipWs(json, i, len);
      if (i < len && load<u8>(json + i) == 0x2c) { // ,
        i = skipWs(json, i + 1, len);
        continue;
      }
      if (i < len && load<u8>(json + i) == 0x7d) {
        i++;
        break;
      }
      return -2;
    }
  }
  return skipWs(json, i, len) == len ? result : -2;
}

// A decimal number of at most 10 digits that fits 32 bits, else -1.
export function parseU32(ptr: usize, len: u32): i64 {
  if (len == 0 || len > 10) return -1;
  let v: u64 = 0;
  for (let i: u32 = 0; i < len; i++) {
    const c = load<u8>(ptr + i);
    if (c < 0x30 || c > 0x39) return -1;
    v = v * 10 + <u64>(c - 0x30);
  }
  return v > 0xffffffff ? -1 : <i64>v;
}

function skipWs(p: usize, i: u32, len: u32): u32 {
  while (i < len) {
    const c = load<u8>(p + i);
    if (c != 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) break;
    i++;
  }
  return i;
}

// Index of the closing quote of a string starting at i, or -1.
function stringEnd(p: usize, i: u32, len: u32): i64 {
  while (i < len) {
    const c = load<u8>(p + i);
    if (c == 0x22) return <i64>i;
    if (c == 0x5c) {
      if (i + 1 >= len) return -1;
      const n = load<u8>(p + i + 1);
      if (n != 0x22 && n != 0x5c) return -1;
      i++;
    }
    i++;
  }
  return -1;
}

function isToken(c: u8): bool {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7a) || c == 0x2d || c == 0x2b || c == 0x2e || c == 0x45;
}

function unescape(src: usize, len: u32, out: usize, cap: u32): i32 {
  let o: u32 = 0;
  for (let i: u32 = 0; i < len; i++, o++) {
    if (load<u8>(src + i) == 0x5c) i++;
    if (o >= cap) return -2;
    store<u8>(out + o, load<u8>(src + i));
  }
  return <i32>o;
}

function rawEquals(raw: usize, len: u32, key: string): bool {
  let k = 0;
  for (let i: u32 = 0; i < len; i++, k++) {
    if (load<u8>(raw + i) == 0x5c) i++;
    if (k >= key.length || <u32>key.charCodeAt(k) != <u32>load<u8>(raw + i)) return false;
  }
  return k == key.length;
}

function listed(known: string, raw: usize, len: u32): bool {
  let start = 0;
  for (let i = 0; i <= known.length; i++) {
    if (i == known.length || known.charCodeAt(i) == 0x2c) {
      if (rawEqualsRange(raw, len, known, start, i)) return true;
      start = i + 1;
    }
  }
  return false;
}

function rawEqualsRange(raw: usize, len: u32, s: string, from: i32, to: i32): bool {
  let k = from;
  for (let i: u32 = 0; i < len; i++, k++) {
    if (load<u8>(raw + i) == 0x5c) i++;
    if (k >= to || <u32>s.charCodeAt(k) != <u32>load<u8>(raw + i)) return false;
  }
  return k == to;
}
