import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { resolve } from "node:path";
import { test } from "node:test";

import { asyncStorage, webStorage } from "../../src/index.js";

const root = resolve(import.meta.dirname, "../../..");

test("npm pack holds the built modules, their types and the README, nothing else", () => {
  const [packed] = JSON.parse(execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: root }).toString()) as {
    files: { path: string }[];
  }[];
  const files = packed.files.map((file) => file.path);
  for (const wanted of ["README.md", "package.json", "dist/index.js", "dist/index.d.ts", "dist/offline.js", "dist/realtime.d.ts"]) {
    assert.ok(files.includes(wanted), `${wanted} in ${files.join(", ")}`);
  }
  assert.deepEqual(files.filter((file) => !file.startsWith("dist/") && !["README.md", "package.json"].includes(file)), []);
});

test("storage adapters keep, read and remove values", async () => {
  const values = new Map<string, string>();
  const adapters = [
    asyncStorage({
      getItem: async (key) => values.get(key) ?? null,
      setItem: async (key, value) => void values.set(key, value),
      removeItem: async (key) => void values.delete(key),
    }),
    webStorage({
      getItem: (key: string) => values.get(key) ?? null,
      setItem: (key: string, value: string) => void values.set(key, value),
      removeItem: (key: string) => void values.delete(key),
    } as Storage),
  ];
  for (const store of adapters) {
    await store.set("k", "v");
    assert.equal(await store.get("k"), "v");
    await store.remove("k");
    assert.equal(await store.get("k"), null);
  }
});
