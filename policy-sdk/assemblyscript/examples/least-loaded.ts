// least-loaded (L4 or L7): the endpoint with the fewest connections in
// flight (the host's live `active` count for this worker), endpoints
// already tried skipped, endpoints that failed within the last `avoidMs`
// milliseconds (default 10000) avoided while another is left. Ties go
// round robin, so an idle Service is still spread.
//
//   {"avoidMs": 10000}
import {
  jsonBadKey, jsonBadKeyLen, setErrorWith,
  context, count, endpoint, jsonValue, parseU32, setError, takeConfig,
} from "../assembly/switchyard";

export { sy_abi_version, sy_alloc, sy_endpoints } from "../assembly/switchyard";

const CONFIG_CAP: u32 = 512;
const CONFIG: usize = memory.data(CONFIG_CAP);
const VALUE: usize = memory.data(16);

let avoidMs: u32 = 10000;
let nextStart: u32 = 0;

export function sy_init(configPtr: i32, configLen: i32): i32 {
  const len = takeConfig(configPtr, configLen, CONFIG, CONFIG_CAP);
  if (len == 0) return 0;
  if (len > CONFIG_CAP) {
    setError("invalid policy config: longer than 512 bytes");
    return 1;
  }
  const n = jsonValue(CONFIG, len, "avoidMs", VALUE, 16, "avoidMs");
  if (n == -1) return 0;
  if (n == -3) {
    setErrorWith("invalid policy config: unknown field ", jsonBadKey, jsonBadKeyLen);
    return 1;
  }
  const v = n < 0 ? -1 : parseU32(VALUE, <u32>n);
  if (v < 0) {
    setError("invalid policy config: avoidMs must be a whole number of milliseconds");
    return 1;
  }
  avoidMs = <u32>v;
  return 0;
}

function failedRecently(i: u32, nowNs: u64): bool {
  const e = endpoint(i);
  if (e.failures == 0 || e.lastFailureMs == 0) return false;
  const nowMs = <u32>(nowNs / 1000000);
  return nowMs - e.lastFailureMs < avoidMs;
}

export function sy_pick(ctxPtr: i32): i32 {
  const ctx = context(ctxPtr);
  const n = count();
  if (n == 0) return -1;
  // Two passes: first only endpoints without a recent failure, then any
  // untried one.
  for (let pass = 0; pass < 2; pass++) {
    let best: i32 = -1;
    let bestActive: u32 = 0;
    for (let k: u32 = 0; k < n; k++) {
      const i = (nextStart + k) % n;
      if (ctx.isTried(i)) continue;
      if (pass == 0 && failedRecently(i, ctx.nowNs)) continue;
      const active = endpoint(i).active;
      if (best < 0 || active < bestActive) {
        best = <i32>i;
        bestActive = active;
      }
    }
    if (best >= 0) {
      nextStart = <u32>best + 1;
      return best;
    }
  }
  return -1;
}
