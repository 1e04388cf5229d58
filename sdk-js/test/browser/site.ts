// What the browser tests share: Debian's Chromium, and a web example built into a temp
// dir and served by the real binary on a copy of the example's project.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { chromium, type Browser } from "playwright-core";

import { Server, type ServerOptions } from "../harness.js";
// @ts-expect-error: a build script in plain JavaScript
import { buildExample } from "../../../scripts/examples.mjs";

export const PASSWORD = "correct horse battery staple";

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", chromiumSandbox: false });
}

export interface Site {
  server: Server;
  browser: Browser;
  /** The dir the server serves with `--public`. */
  web: string;
  close(): Promise<void>;
}

/** Serves `web` (filled by `fill`) beside the API, with a browser to look at it. */
export async function site(fill: (web: string) => Promise<unknown>, options: ServerOptions = {}): Promise<Site> {
  const web = mkdtempSync(join(tmpdir(), "hearth-web-"));
  await fill(web);
  const server = await Server.start({ ...options, publicDir: web });
  const browser = await launchChromium();
  return {
    server,
    browser,
    web,
    async close() {
      await browser.close();
      await server.close();
      rmSync(web, { recursive: true, force: true });
    },
  };
}

/** Example `name` (`examples/NAME/web`) served on its project's rules and functions. */
export function exampleSite(name: string): Promise<Site> {
  return site((web) => buildExample(name, web), { project: resolve(import.meta.dirname, "../../../../examples", name) });
}
