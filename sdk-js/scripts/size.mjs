// Bundle sizes, min+gzip with esbuild, of the Hearth client and of its peers' SDKs bundled
// the same way: `npm run size`. The peers (firebase, pocketbase) are installed into
// `.bench/` on first use; nothing of them is part of the package.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const bench = resolve(here, "../.bench");
const client = resolve(here, "../src/index.ts");
const PEERS = ["firebase@13", "pocketbase@0.28"];

const ENTRIES = {
  "hearth: auth + documents + queries": `
    import { createClient } from ${JSON.stringify(client)};
    const hearth = createClient("https://example.com");
    await hearth.auth.signIn("a@example.com", "pw");
    await hearth.doc("rooms/r1").get();
    await hearth.collection("rooms").where("n", ">", 1).orderBy("n").get();`,
  "hearth: + realtime": `
    import { createClient, onSnapshot, channel } from ${JSON.stringify(client)};
    const hearth = createClient("https://example.com");
    await hearth.auth.signIn("a@example.com", "pw");
    await hearth.doc("rooms/r1").get();
    onSnapshot(hearth.collection("rooms").where("n", ">", 1).orderBy("n"), console.log);
    channel(hearth, "room:r1").join({});`,
  "hearth: + offline": `
    import { createClient, onSnapshot, channel, enableOffline } from ${JSON.stringify(client)};
    const hearth = createClient("https://example.com");
    enableOffline(hearth);
    await hearth.auth.signIn("a@example.com", "pw");
    await hearth.doc("rooms/r1").get();
    onSnapshot(hearth.collection("rooms").where("n", ">", 1).orderBy("n"), console.log);
    channel(hearth, "room:r1").join({});`,
  "firebase: auth + firestore": `
    import { initializeApp } from "firebase/app";
    import { getAuth, signInWithEmailAndPassword } from "firebase/auth";
    import { getFirestore, doc, getDoc, collection, query, where, orderBy, getDocs, onSnapshot } from "firebase/firestore";
    const app = initializeApp({ apiKey: "x", projectId: "x" });
    await signInWithEmailAndPassword(getAuth(app), "a@example.com", "pw");
    const db = getFirestore(app);
    await getDoc(doc(db, "rooms/r1"));
    const q = query(collection(db, "rooms"), where("n", ">", 1), orderBy("n"));
    await getDocs(q);
    onSnapshot(q, console.log);`,
  "pocketbase": `
    import PocketBase from "pocketbase";
    const pb = new PocketBase("https://example.com");
    await pb.collection("users").authWithPassword("a@example.com", "pw");
    await pb.collection("rooms").getOne("r1");
    await pb.collection("rooms").getList(1, 20, { filter: "n > 1", sort: "n" });
    pb.collection("rooms").subscribe("*", console.log);`,
};

if (!existsSync(join(bench, "node_modules", "firebase"))) {
  mkdirSync(bench, { recursive: true });
  execFileSync("npm", ["install", "--no-save", "--no-audit", "--no-fund", "--prefix", bench, ...PEERS], { stdio: "inherit" });
}

const versions = Object.fromEntries(
  ["firebase", "pocketbase"].map((name) => [name, JSON.parse(readFileSync(join(bench, "node_modules", name, "package.json"), "utf8")).version]),
);
console.log(`esbuild, minified, ES2022, browser; gzip level 9. firebase ${versions.firebase}, pocketbase ${versions.pocketbase}`);
const sizes = {};
for (const [name, source] of Object.entries(ENTRIES)) {
  const entry = join(bench, `${name.replace(/[^a-z]+/g, "-")}.mjs`);
  writeFileSync(entry, source);
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2022",
    platform: "browser",
    write: false,
    nodePaths: [join(bench, "node_modules")],
    logLevel: "error",
  });
  const bytes = result.outputFiles[0].contents;
  sizes[name] = { min: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
  console.log(`${name.padEnd(40)} ${String(sizes[name].min).padStart(8)} B min ${String(sizes[name].gzip).padStart(8)} B min+gzip`);
}
const full = sizes["hearth: + offline"].gzip;
console.log(`hearth full / pocketbase: ${(full / sizes.pocketbase.gzip).toFixed(2)}x; / firebase: ${(full / sizes["firebase: auth + firestore"].gzip).toFixed(3)}x`);
