// Builds the AssemblyScript example policies and checks their imports:
//
//   node build.mjs [OUT_DIR]     (npm run build -- OUT_DIR)
//
// examples/<name>.ts → OUT_DIR/<name>.wasm (default: <repo>/target/policies-as),
// written to a temporary name and renamed. Each module may import only the
// `switchyard` functions of ABI v1 and must export what ABI v1 requires.
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, renameSync, statSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const targetDir = process.env.CARGO_TARGET_DIR || join(root, "target");
const out = resolve(process.argv[2] || join(targetDir, "policies-as"));
const asc = join(here, "node_modules", ".bin", "asc");

const ALLOWED = new Set(["now_ns", "random_u64", "log", "set_error", "request_attr"]);
const REQUIRED = ["memory", "sy_abi_version", "sy_alloc", "sy_init", "sy_endpoints", "sy_pick"];

mkdirSync(out, { recursive: true });
let failed = false;
for (const file of readdirSync(join(here, "examples")).filter((f) => f.endsWith(".ts")).sort()) {
  const name = basename(file, ".ts");
  const tmp = join(out, `.${name}.wasm.tmp`);
  // --runtime minimal: heap.alloc/heap.free for sy_alloc (the policies
  // allocate no managed objects, so the collector never has work);
  // --use abort=: a failed assertion traps instead of importing env.abort.
  const run = spawnSync(asc, [
    join("examples", file), "--outFile", tmp, "--optimizeLevel", "3", "--shrinkLevel", "1",
    "--runtime", "minimal", "--use", "abort=", "--initialMemory", "1",
  ], { cwd: here, stdio: "inherit" });
  if (run.status !== 0) {
    console.error(`build.mjs: asc failed on examples/${file}`);
    process.exit(1);
  }
  const module = new WebAssembly.Module(readFileSync(tmp));
  for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module !== "switchyard" || imp.kind !== "function" || !ALLOWED.has(imp.name)) {
      console.error(`${name}: import ${imp.module}.${imp.name} (${imp.kind}) is not part of ABI v1`);
      failed = true;
    }
  }
  const exports = new Set(WebAssembly.Module.exports(module).map((e) => e.name));
  for (const want of REQUIRED) {
    if (!exports.has(want)) {
      console.error(`${name}: missing export ${want}`);
      failed = true;
    }
  }
  const dest = join(out, `${name}.wasm`);
  renameSync(tmp, dest);
  console.log(`${String(statSync(dest).size).padStart(8)}  ${dest}`);
}
process.exit(failed ? 1 : 0);
