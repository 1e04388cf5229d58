// The web client in headless Chromium against the real binary (release, or HEARTH_TEST_BIN):
//   1. time from starting the client to the first answer of a query from the IndexedDB
//      cache holding 1,000 documents (the server unreachable), median of 20 page loads;
//   2. write-to-listener latency between two pages through the server, p50/p99 over
//      1,000 writes made one after the other.
// `npm run bench:browser`. Loopback only; bounded in count.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
process.env.HEARTH_TEST_BIN ??= resolve(here, "../../target/release/hearth");
const { Server } = await import("../build-test/test/harness.js");

const web = mkdtempSync(join(tmpdir(), "hearth-bench-web-"));
await build({ entryPoints: [join(here, "page.ts")], outfile: join(web, "bench.js"), bundle: true, format: "esm", minify: true, logLevel: "error" });
writeFileSync(join(web, "index.html"), '<!doctype html><meta charset="utf-8"><script type="module" src="/bench.js"></script>');
const rules = `["items/{id}"]\nread = "auth != null && resource.data.owner == auth.uid"\nwrite = "auth != null && request.data.owner == auth.uid"\n`;
const server = await Server.start({ rules, publicDir: web });
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", chromiumSandbox: false });
const percentile = (values, p) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor((values.length * p) / 100))];

try {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server.url}/`);
  await page.waitForFunction(() => globalThis.Hearth);
  const email = `bench-${Date.now()}@example.com`;
  await page.evaluate(async (email) => {
    const { createClient, enableOffline, onSnapshot } = globalThis.Hearth;
    const hearth = createClient(location.origin);
    enableOffline(hearth);
    await hearth.auth.signUp(email, "correct horse battery staple");
    const owner = hearth.auth.currentUser.id;
    for (let start = 0; start < 1000; start += 500) {
      const batch = hearth.batch();
      for (let i = start; i < start + 500; i++) batch.set(`items/i${String(i).padStart(4, "0")}`, { owner, n: i, text: "x".repeat(200) });
      await batch.commit();
    }
    // A listener fills the cache with what it receives.
    await new Promise((done) => {
      const stop = onSnapshot(hearth.collection("items").where("owner", "==", owner).limit(1000), (snapshot) => {
        if (!snapshot.fromCache && snapshot.docs.length === 1000) {
          stop();
          done();
        }
      });
    });
    await new Promise((done) => setTimeout(done, 500)); // IndexedDB writes settle
  }, email);

  const loads = [];
  for (let run = 0; run < 20; run++) {
    const fresh = await context.newPage();
    await fresh.goto(`${server.url}/`);
    await fresh.waitForFunction(() => globalThis.Hearth);
    await context.setOffline(true);
    loads.push(
      await fresh.evaluate(async () => {
        const { createClient, enableOffline, onSnapshot } = globalThis.Hearth;
        const start = performance.now();
        const hearth = createClient(location.origin);
        enableOffline(hearth);
        await hearth.auth.ready;
        const owner = hearth.auth.currentUser.id;
        await new Promise((done) => {
          onSnapshot(hearth.collection("items").where("owner", "==", owner).limit(1000), (snapshot) => {
            if (snapshot.docs.length === 1000) done();
          });
        });
        return performance.now() - start;
      }),
    );
    await context.setOffline(false);
    await fresh.close();
  }
  const fmt = (ms) => `${ms.toFixed(1)} ms`;
  console.log(
    `first answer from the cache, 1,000 documents: median ${fmt(percentile(loads, 50))}, p90 ${fmt(percentile(loads, 90))}, first load ${fmt(loads[0])} (${loads.length} loads)`,
  );

  // Two pages of two users' browsers: one writes, the other listens.
  const writer = await (await browser.newContext()).newPage();
  const reader = await (await browser.newContext()).newPage();
  for (const tab of [writer, reader]) {
    await tab.goto(`${server.url}/`);
    await tab.waitForFunction(() => globalThis.Hearth);
  }
  const shared = `lat-${Date.now()}@example.com`;
  await writer.evaluate(async (email) => {
    const hearth = globalThis.Hearth.createClient(location.origin);
    await hearth.auth.signUp(email, "correct horse battery staple");
    globalThis.client = hearth;
  }, shared);
  await reader.evaluate(async (email) => {
    const { createClient, onSnapshot } = globalThis.Hearth;
    const hearth = createClient(location.origin);
    await hearth.auth.signIn(email, "correct horse battery staple");
    globalThis.seen = [];
    await new Promise((done) => {
      onSnapshot(hearth.collection("items").where("owner", "==", hearth.auth.currentUser.id).orderBy("n", "desc").limit(1), (snapshot) => {
        for (const change of snapshot.changes) if (change.type === "added") globalThis.seen.push([change.doc.data.n, performance.timeOrigin + performance.now()]);
        done();
      });
    });
  }, shared);
  const sent = await writer.evaluate(async () => {
    const hearth = globalThis.client;
    const owner = hearth.auth.currentUser.id;
    const times = [];
    for (let n = 0; n < 1000; n++) {
      times.push(performance.timeOrigin + performance.now());
      await hearth.doc(`items/w${n}`).set({ owner, n });
    }
    return times;
  });
  await reader.waitForFunction(() => globalThis.seen.some(([n]) => n === 999), null, { timeout: 30_000 });
  const seen = new Map(await reader.evaluate(() => globalThis.seen));
  const latencies = sent.map((at, n) => seen.get(n) - at).filter((ms) => !Number.isNaN(ms));
  console.log(
    `write to listener, 2 pages: p50 ${fmt(percentile(latencies, 50))}, p90 ${fmt(percentile(latencies, 90))}, p99 ${fmt(percentile(latencies, 99))}, max ${fmt(Math.max(...latencies))} (${latencies.length} of 1000 writes seen)`,
  );
} finally {
  await browser.close();
  await server.close();
  rmSync(web, { recursive: true, force: true });
}
