// Starts the real `hearth` binary on a random loopback port with a fresh project dir.
import { spawn, type ChildProcess } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const KEY = "hk_test_service_key_for_the_js_suite_0123456789";

/** The binary `cargo build` made (or `HEARTH_TEST_BIN`). */
export const HEARTH_TEST_BIN = process.env.HEARTH_TEST_BIN ?? resolve(import.meta.dirname, "../../../target/debug/hearth");

export interface ServerOptions {
  /** A project dir whose rules and functions the server starts with (copied, so it stays clean). */
  project?: string;
  /** hearth.toml */
  config?: string;
  rules?: string;
  /** `--public DIR` */
  publicDir?: string;
  /** HOST:PORT (default: a free port) */
  addr?: string;
}

export class Server {
  child: ChildProcess | undefined;
  url = "";
  readonly dir: string;
  private addr: string;
  output = "";

  private constructor(private readonly options: ServerOptions) {
    this.addr = options.addr ?? "127.0.0.1:0";
    this.dir = mkdtempSync(join(tmpdir(), "hearth-js-"));
    for (const file of ["rules.toml", "functions"]) {
      const source = options.project && join(options.project, file);
      if (source && existsSync(source)) cpSync(source, join(this.dir, file), { recursive: true });
    }
    if (options.config) writeFileSync(join(this.dir, "hearth.toml"), options.config);
    if (options.rules) writeFileSync(join(this.dir, "rules.toml"), options.rules);
  }

  static async start(options: ServerOptions = {}): Promise<Server> {
    const server = new Server(options);
    await server.run();
    return server;
  }

  /** Starts (again, on the same port and data). */
  async run(): Promise<void> {
    const args = ["serve", "--dir", this.dir, "--addr", this.addr];
    if (this.options.publicDir) args.push("--public", this.options.publicDir);
    const child = spawn(HEARTH_TEST_BIN, args, {
      env: {
        ...process.env,
        HEARTH_SERVICE_KEY: KEY,
        HEARTH_AUTH__PASSWORD__MEMORY_KIB: "1024",
        HEARTH_AUTH__PASSWORD__ITERATIONS: "1",
        RUST_LOG: "info",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    this.url = await new Promise<string>((resolveUrl, reject) => {
      const timer = setTimeout(() => reject(new Error(`hearth did not start:\n${this.output}`)), 30_000);
      const read = (chunk: Buffer) => {
        this.output += chunk.toString();
        const found = /listening on (http:\/\/[0-9.:]+)/.exec(this.output.slice(-2000));
        if (found) {
          clearTimeout(timer);
          resolveUrl(found[1]);
        }
      };
      child.stdout!.on("data", read);
      child.stderr!.on("data", read);
      child.on("exit", (code) => reject(new Error(`hearth exited with ${code}:\n${this.output}`)));
    });
    this.addr = this.url.replace("http://", "");
    this.output = "";
  }

  /** Stops the process (SIGKILL with `crash`) and waits for it. */
  async stop(crash = false): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((done) => {
      child.once("exit", () => done());
      child.kill(crash ? "SIGKILL" : "SIGTERM");
    });
  }

  async close(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A loopback port nothing listens on now. */
export async function freePort(): Promise<number> {
  const { createServer } = await import("node:net");
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as import("node:net").AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Waits until `check` holds, or fails after `ms`. */
export async function eventually(check: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
