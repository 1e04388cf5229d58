// The offline todo example in headless Chromium: a page that goes offline keeps working,
// survives a reload, and its writes reach another page once each, in order.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { type Browser, type BrowserContext, type Page } from "playwright-core";

import { createClient } from "../../src/index.js";
import { KEY, type Server } from "../harness.js";
import { PASSWORD, exampleSite, type Site } from "./site.js";

let server: Server;
let browser: Browser;
let example: Site;

before(async () => {
  example = await exampleSite("todo");
  ({ server, browser } = example);
});

after(() => example?.close());

const titles = (page: Page) => page.$$eval("#todos li span", (items) => items.map((item) => item.textContent));

async function open(context: BrowserContext, email: string, signUp: boolean): Promise<Page> {
  const page = await context.newPage();
  await page.goto(`${server.url}/`);
  await page.fill("#auth-email", email);
  await page.fill("#auth-password", PASSWORD);
  await page.click(signUp ? "#sign-up" : "#sign-in");
  await page.waitForSelector("#list:not([hidden])");
  // Once the service worker runs the page, it loads without the server.
  await page.evaluate(() => navigator.serviceWorker.ready);
  await page.reload();
  await page.waitForFunction(() => navigator.serviceWorker.controller !== null);
  await page.waitForSelector("#list:not([hidden])");
  return page;
}

async function add(page: Page, title: string): Promise<void> {
  await page.fill("#title", title);
  await page.press("#title", "Enter");
  await page.waitForFunction((wanted) => [...document.querySelectorAll("#todos li span")].some((span) => span.textContent === wanted), title);
}

test("writes made offline survive a reload and reach another page once each, in order, in one request", async () => {
  const email = `ada-${Math.random().toString(36).slice(2, 8)}@example.com`;
  const phone = await browser.newContext();
  const laptop = await browser.newContext();
  const offline = await open(phone, email, true);
  const watcher = await open(laptop, email, false);
  await add(offline, "first, online");
  await watcher.waitForFunction(() => document.querySelector("#todos")!.textContent!.includes("first, online"));

  await phone.setOffline(true);
  for (const title of ["one", "two", "three"]) await add(offline, title);
  await offline.check('[aria-label="done: one"]');
  assert.equal(await offline.textContent("#status"), "saved here, not yet on the server");
  await offline.reload();
  await offline.waitForSelector("#list:not([hidden])");
  await offline.waitForFunction(() => document.querySelectorAll("#todos li").length === 4);
  assert.deepEqual(await titles(offline), ["first, online", "one", "two", "three"], "the page and the writes came back from this browser");
  assert.deepEqual(await titles(watcher), ["first, online"], "nothing reached the server yet");

  const writes: string[] = [];
  offline.on("request", (request) => {
    const path = new URL(request.url()).pathname;
    if (request.method() !== "GET" && path.startsWith("/v1/") && !path.startsWith("/v1/auth/")) writes.push(`${request.method()} ${path}`);
  });
  await phone.setOffline(false);
  await watcher.waitForFunction(() => document.querySelectorAll("#todos li").length === 4, null, { timeout: 15_000 });
  await offline.waitForFunction(() => document.querySelector("#status")!.textContent === "");
  assert.deepEqual(await titles(watcher), ["first, online", "one", "two", "three"]);
  assert.ok(await watcher.isChecked('[aria-label="done: one"]'), "the update went after its create");
  assert.deepEqual(writes, ["POST /v1/batch"], "the four queued writes went in one request");
  await phone.close();
  await laptop.close();
});

test("a queued write the rules refuse is rolled back and reported as permission-denied", async () => {
  const context = await browser.newContext();
  const page = await open(context, `bo-${Math.random().toString(36).slice(2, 8)}@example.com`, true);
  await context.setOffline(true);
  // The page's input stops at 500 characters; the rules refuse longer titles.
  await page.evaluate(() => {
    const { hearth } = globalThis as unknown as { hearth: { auth: { currentUser: { id: string } }; collection(path: string): { add(data: object): Promise<unknown> } } };
    return hearth.collection("todos").add({ owner: hearth.auth.currentUser.id, title: "x".repeat(501), done: false, at: { $server_time: true } });
  });
  await add(page, "fine");
  assert.equal((await page.$$("#todos li")).length, 2, "both show while offline");
  await context.setOffline(false);
  await page.waitForFunction(() => document.querySelector("#error")!.textContent!.startsWith("permission-denied"), null, { timeout: 15_000 });
  await page.waitForFunction(() => document.querySelectorAll("#todos li").length === 1);
  assert.deepEqual(await titles(page), ["fine"]);
  await context.close();
});

test("two tabs of one browser share the cache and the queue, and each write reaches the server once", async () => {
  const context = await browser.newContext();
  const first = await open(context, `cy-${Math.random().toString(36).slice(2, 8)}@example.com`, true);
  const second = await context.newPage();
  await second.goto(`${server.url}/`);
  await second.waitForSelector("#list:not([hidden])");
  await context.setOffline(true);
  await add(first, "from the first tab");
  await second.waitForFunction(() => document.querySelector("#todos")!.textContent!.includes("from the first tab"));
  await add(second, "from the second tab");
  await first.waitForFunction(() => document.querySelector("#todos")!.textContent!.includes("from the second tab"));
  await context.setOffline(false);
  for (const page of [first, second]) {
    await page.waitForFunction(() => document.querySelector("#status")!.textContent === "", null, { timeout: 15_000 }).catch(async (error) => {
      const state = await page.evaluate(() => ({
        status: document.querySelector("#status")!.textContent,
        todos: document.querySelector("#todos")!.textContent,
        pending: (globalThis as unknown as { offline: { pendingWrites: number } }).offline.pendingWrites,
      }));
      throw new Error(`${page === first ? "first" : "second"} tab: ${JSON.stringify(state)}: ${error}`);
    });
  }
  const uid = await first.evaluate(() => (globalThis as unknown as { hearth: { auth: { currentUser: { id: string } } } }).hearth.auth.currentUser.id);
  const admin = createClient(server.url, { serviceKey: KEY });
  const stored = await admin.collection<{ title: string }>("todos").where("owner", "==", uid).orderBy("at").get();
  assert.deepEqual(stored.docs.map((doc) => doc.data.title), ["from the first tab", "from the second tab"]);
  admin.close();
  await context.close();
});
