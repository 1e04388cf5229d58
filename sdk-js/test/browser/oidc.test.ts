// Provider sign-in in Chromium: the page goes to the provider and back, and the client
// finishes the sign-in from the URL fragment, removes it, and keeps the session.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { build } from "esbuild";
import type { Browser } from "playwright-core";

import { type Server, freePort } from "../harness.js";
import { site, type Site } from "./site.js";
import { CLIENT_ID, CLIENT_SECRET, Provider } from "../oidc.js";

let server: Server;
let provider: Provider;
let browser: Browser;
let served: Site;

before(async () => {
  provider = await Provider.start();
  const addr = `127.0.0.1:${await freePort()}`;
  const config = `[auth.oauth]
public_url = "http://${addr}"
allowed_redirects = ["http://${addr}/signed-in"]

[auth.oauth.providers.test]
issuer = "${provider.issuer}"
client_id = "${CLIENT_ID}"
client_secret = "${CLIENT_SECRET}"
`;
  served = await site(async (web) => {
    await build({ entryPoints: [join(import.meta.dirname, "page.js")], outfile: join(web, "page.js"), bundle: true, format: "esm", logLevel: "error" });
    writeFileSync(join(web, "index.html"), '<!doctype html><meta charset="utf-8"><script type="module" src="/page.js"></script>');
  }, { config, addr });
  ({ server, browser } = served);
});

after(async () => {
  await served?.close();
  provider?.close();
});

test("a provider sign-in comes back to the page, signs in and leaves no token in the URL", async () => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/`);
  await page.waitForFunction(() => "Hearth" in globalThis);
  await Promise.all([
    page.waitForURL(/\/signed-in#/),
    page.evaluate(() => {
      const { createClient } = (globalThis as unknown as { Hearth: typeof import("../../src/index.js") }).Hearth;
      createClient(location.origin).auth.signInWithRedirect("test", `${location.origin}/signed-in`);
    }),
  ]);
  await page.waitForFunction(() => "Hearth" in globalThis);
  const result = await page.evaluate(async () => {
    const { createClient } = (globalThis as unknown as { Hearth: typeof import("../../src/index.js") }).Hearth;
    const signIn = await createClient(location.origin).auth.handleRedirect();
    return { signIn, url: location.href };
  });
  assert.ok(result.signIn && !result.signIn.mfaRequired, JSON.stringify(result));
  assert.equal(result.signIn.user.email, "oidc@example.com");
  assert.deepEqual(result.signIn.user.providers, ["test"]);
  assert.equal(result.url, `${server.url}/signed-in`, "the tokens are gone from the URL");
  await page.reload();
  await page.waitForFunction(() => "Hearth" in globalThis);
  const kept = await page.evaluate(async () => {
    const { createClient } = (globalThis as unknown as { Hearth: typeof import("../../src/index.js") }).Hearth;
    const hearth = createClient(location.origin);
    await hearth.auth.ready;
    return hearth.auth.currentUser?.email ?? null;
  });
  assert.equal(kept, "oidc@example.com", "the session outlives the reload");
  await page.close();
});
