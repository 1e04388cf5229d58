// Builds the web examples (`examples/*/web`) into their `dist/` (or a dir given), served
// by `hearth serve --public`: the page, its script bundled with the client, and .br/.gz
// copies for browsers that take them.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { brotliCompressSync, gzipSync } from "node:zlib";

import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const examples = resolve(here, "../../examples");

export const EXAMPLES = ["chat", "todo"];

/** Builds example `name` into `out` (default its `web/dist`); the dir. */
export async function buildExample(name, out = join(examples, name, "web", "dist")) {
  const source = join(examples, name, "web");
  mkdirSync(out, { recursive: true });
  await build({
    entryPoints: [join(source, "app.ts")],
    outfile: join(out, "app.js"),
    bundle: true,
    format: "esm",
    target: "es2022",
    minify: true,
    sourcemap: true,
    alias: { "@hearth/client": resolve(here, "../src/index.ts") },
    logLevel: "warning",
  });
  copyFileSync(join(source, "index.html"), join(out, "index.html"));
  if (existsSync(join(source, "sw.js"))) copyFileSync(join(source, "sw.js"), join(out, "sw.js"));
  for (const file of ["app.js", "index.html"]) {
    const bytes = readFileSync(join(out, file));
    writeFileSync(join(out, `${file}.gz`), gzipSync(bytes, { level: 9 }));
    writeFileSync(join(out, `${file}.br`), brotliCompressSync(bytes));
  }
  return out;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const name of EXAMPLES) console.log(`built ${await buildExample(name)}`);
}
