// header-routing (L7): routes each HTTP request by a header. The header's
// value names a group of endpoints: those whose Pod name starts with it
// (`x-pod: web-b` → web-b, `x-pod: web-` → every web-* Pod). Round robin
// within the group; requests without the header, with a value no Pod
// matches, and every L4 connection, go round robin over all endpoints.
// Endpoints already tried are skipped.
//
//   {"header": "x-pod"}        (the default; matched case-insensitively)
import {
  jsonBadKey, jsonBadKeyLen, setErrorWith,
  ATTR_HEADER, Context, MODE_L7, context, count, jsonValue, nameStartsWith, requestAttr, setError,
  takeConfig,
} from "../assembly/switchyard";

export { sy_abi_version, sy_alloc, sy_endpoints } from "../assembly/switchyard";

const CONFIG_CAP: u32 = 512;
const CONFIG: usize = memory.data(CONFIG_CAP);
const MAX_NAME: u32 = 64;
const HEADER: usize = memory.data(64);
const VALUE_CAP: u32 = 253;
const VALUE: usize = memory.data(253);

let headerLen: i32 = 0;
let cursor: u32 = 0;

function setHeader(name: string): void {
  headerLen = <i32>String.UTF8.encodeUnsafe(changetype<usize>(name), name.length, HEADER, false);
}

export function sy_init(configPtr: i32, configLen: i32): i32 {
  setHeader("x-pod");
  const len = takeConfig(configPtr, configLen, CONFIG, CONFIG_CAP);
  if (len == 0) return 0;
  if (len > CONFIG_CAP) {
    setError("invalid policy config: longer than 512 bytes");
    return 1;
  }
  const n = jsonValue(CONFIG, len, "header", VALUE, MAX_NAME, "header");
  if (n == -1) return 0;
  if (n == -3) {
    setErrorWith("invalid policy config: unknown field ", jsonBadKey, jsonBadKeyLen);
    return 1;
  }
  if (n <= 0) {
    setError("invalid policy config: header must be a header name of 1 to 64 bytes");
    return 1;
  }
  // The host wants header names in lowercase.
  for (let i = 0; i < n; i++) {
    let c = load<u8>(VALUE + i);
    if (c >= 0x41 && c <= 0x5a) c += 0x20;
    store<u8>(HEADER + i, c);
  }
  headerLen = n;
  return 0;
}

// Round robin over the untried endpoints whose name starts with the len
// bytes at prefix (all of them when len is 0); -1 when none is left.
function nextIn(ctx: Context, prefix: usize, len: u32): i32 {
  const n = count();
  for (let k: u32 = 0; k < n; k++) {
    const i = (cursor + k) % n;
    if (ctx.isTried(i)) continue;
    if (len > 0 && !nameStartsWith(i, prefix, len)) continue;
    cursor = i + 1;
    return <i32>i;
  }
  return -1;
}

export function sy_pick(ctxPtr: i32): i32 {
  const ctx = context(ctxPtr);
  if (ctx.mode == MODE_L7) {
    const len = requestAttr(ATTR_HEADER, HEADER, headerLen, VALUE, <i32>VALUE_CAP);
    if (len > 0 && len <= <i32>VALUE_CAP) {
      const i = nextIn(ctx, VALUE, <u32>len);
      if (i >= 0) return i;
    }
  }
  return nextIn(ctx, 0, 0);
}
