// The web client in headless Chromium (Debian's, through playwright-core), on the chat
// example served by the real binary with `--public`.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { type Browser, type Page } from "playwright-core";
import WebSocket from "ws";

import { createClient, memoryStorage, type WebSocketLike } from "../../src/index.js";
import type { Server } from "../harness.js";
import { PASSWORD, exampleSite, type Site } from "./site.js";

let server: Server;
let browser: Browser;
let example: Site;

before(async () => {
  example = await exampleSite("chat");
  ({ server, browser } = example);
});

after(() => example?.close());

const email = (name: string) => `${name}-${Math.random().toString(36).slice(2, 8)}@example.com`;

async function signUp(page: Page, address: string): Promise<void> {
  await page.goto(`${server.url}/`);
  await page.fill("#auth-email", address);
  await page.fill("#auth-password", PASSWORD);
  await page.click("#sign-up");
  await page.waitForSelector("#chat:not([hidden])");
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const messages = (page: Page) => page.$$eval("#messages li", (items) => items.map((item) => item.textContent));

test("a session survives a reload", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const address = email("ada");
  await signUp(page, address);
  assert.equal(await page.textContent("#email"), address);
  await page.reload();
  await page.waitForSelector("#chat:not([hidden])");
  assert.equal(await page.textContent("#email"), address, "signed in from IndexedDB after the reload");
  await context.close();
});

test("two pages chat live, see who is here and who is typing", async () => {
  const one = await (await browser.newContext()).newPage();
  const two = await (await browser.newContext()).newPage();
  await signUp(one, email("bea"));
  await signUp(two, email("cal"));
  await one.waitForFunction(() => document.querySelectorAll("#who li").length === 2);
  await two.fill("#text", "h");
  await one.waitForFunction(() => document.querySelector("#typing")!.textContent!.includes("typing"));
  await say(one, "hello from one");
  await say(two, "hello from two");
  for (const page of [one, two]) {
    await page.waitForFunction(() => [...document.querySelectorAll("#messages li")].some((li) => li.textContent!.includes("from two")));
  }
  const seen = (await messages(two)).filter((text) => text!.includes("hello from"));
  assert.deepEqual(seen.map((text) => text!.slice(text!.indexOf("hello"))), ["hello from one", "hello from two"]);
  // The word filter ran before the write; the page shows what was stored.
  await say(one, "oh heck");
  await two.waitForFunction(() => document.querySelector("#messages")!.textContent!.includes("oh ****"));
  await one.context().close();
  await two.context().close();
});

test("two tabs share one session across 20 refreshes without a sign-out", async () => {
  const context = await browser.newContext();
  const first = await context.newPage();
  const address = email("dan");
  await signUp(first, address);
  const second = await context.newPage();
  await second.goto(`${server.url}/`);
  await second.waitForSelector("#chat:not([hidden])");
  type Page = typeof first;
  const refresh = (page: Page) =>
    page.evaluate(async () => {
      const hearth = (globalThis as unknown as { hearth: { auth: { getToken(force: boolean): Promise<string | null> } } }).hearth;
      return hearth.auth.getToken(true);
    });
  for (let round = 0; round < 20; round++) {
    const [a, b] = await Promise.all([refresh(first), refresh(second)]);
    assert.ok(a && b, `round ${round}: both tabs still signed in`);
  }
  // Had a tab sent a rotated-out token, the server would have revoked the family.
  for (const page of [first, second]) {
    const user = await page.evaluate(async () => {
      const hearth = (globalThis as unknown as { hearth: { auth: { reloadUser(): Promise<{ email: string }> } } }).hearth;
      return (await hearth.auth.reloadUser()).email;
    });
    assert.equal(user, address);
  }
  // A sign-out in one tab signs out the other.
  await first.click("#sign-out");
  await second.waitForSelector("#auth:not([hidden])");
  await context.close();
});

test("a listening page misses nothing and repeats nothing across a server restart", async () => {
  const page = await (await browser.newContext()).newPage();
  const address = email("eve");
  await signUp(page, address);
  const node = createClient(server.url, { persistence: memoryStorage(), WebSocket: WebSocket as unknown as WebSocketLike });
  const writer = email("fox");
  await node.auth.signUp(writer, PASSWORD);
  await node.call("joinRoom", { room: "lobby" });
  const send = (text: string) =>
    node.collection("rooms/lobby/messages").add({ author: node.auth.currentUser!.id, name: "fox", text, sent_at: { $server_time: true } });
  await send("before the restart");
  await page.waitForFunction(() => document.querySelector("#messages")!.textContent!.includes("before the restart"));
  await server.stop();
  await server.run();
  for (const n of [1, 2, 3]) await send(`after the restart ${n}`);
  await page.waitForFunction(() => document.querySelector("#messages")!.textContent!.includes("after the restart 3"), null, { timeout: 15_000 });
  const mine = (await messages(page)).filter((text) => text!.includes("restart"));
  assert.deepEqual(mine, ["foxbefore the restart", "foxafter the restart 1", "foxafter the restart 2", "foxafter the restart 3"]);
  node.close();
  await page.context().close();
});
