// The offline cache: documents seen and writes made offline, in IndexedDB (memory where
// there is none), one database per user. See `enableOffline`.
import type { Auth } from "./auth.js";
import type { BatchWrite, DocsHost, Page } from "./docs.js";
import { HearthError } from "./errors.js";
import { applyWrite } from "./eval.js";
import { committed, openDatabase, request } from "./idb.js";
import type { LocalCache, Target } from "./local.js";
import type { Doc, QuerySpec } from "./types.js";
import { inTarget, queryMatches, queryOrder } from "./value.js";

/** Writes made offline that the server refused when they were sent; they no longer show. */
export interface RejectedWrite {
  writes: BatchWrite[];
  error: HearthError;
}

interface Entry {
  seq: number;
  writes: BatchWrite[];
}

interface Stores {
  docs: IDBObjectStore;
  queue: IDBObjectStore;
}

/** IndexedDB work waiting for its transaction. */
interface Batch {
  db: IDBDatabase;
  work: ((stores: Stores) => void)[];
  done: Promise<void>;
}

export interface OfflineHost extends DocsHost {
  readonly auth: Auth;
  readonly closers: Set<() => void>;
}

/** At most this many writes go in one request when the queue is sent. */
const BATCH_WRITES = 500;
const MAX_RETRY_MS = 30_000;

const unreachable = (error: unknown) => error instanceof HearthError && error.code === "unavailable";

/**
 * Turns on the offline cache of `client`: documents and query answers seen are kept
 * (in IndexedDB in a browser, per user), reads, queries and listeners answer from them
 * when the server cannot be reached, and writes made then show at once and are queued,
 * to be sent in order, batched, when it answers again. Tabs share the cache and the
 * queue; one tab at a time sends it (a Web Lock).
 */
export function enableOffline(client: OfflineHost): Offline {
  const offline = new Offline(client);
  client.local = offline;
  return offline;
}

export class Offline implements LocalCache {
  /** The server's state as last seen, by path. */
  #docs = new Map<string, Doc>();
  /** Writes waiting for the server, oldest first. */
  #queue: Entry[] = [];
  #db: IDBDatabase | null = null;
  #batch: Batch | undefined;
  #name = "";
  #listeners = new Set<() => void>();
  #rejected = new Set<(rejected: RejectedWrite) => void>();
  #channel: BroadcastChannel | undefined;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #attempt = 0;
  #sending = false;
  #closed = false;
  /** Settles once the signed-in user's cache is loaded. */
  ready: Promise<void>;

  constructor(private readonly client: OfflineHost) {
    this.ready = client.auth.ready.then(() => this.#open(client.auth.currentUser?.id ?? null));
    let user = client.auth.currentUser?.id ?? null;
    client.auth.onAuthStateChanged((next) => {
      if ((next?.id ?? null) === user) return;
      user = next?.id ?? null;
      this.ready = this.#open(user);
    });
    const online = () => this.poke();
    globalThis.addEventListener?.("online", online);
    client.closers.add(() => {
      this.#closed = true;
      globalThis.removeEventListener?.("online", online);
      clearTimeout(this.#retry);
      this.#channel?.close();
      this.#db?.close();
    });
  }

  /** Writes waiting for the server. */
  get pendingWrites(): number {
    return this.#queue.reduce((count, entry) => count + entry.writes.length, 0);
  }

  /** Calls `listener` for each queued write (or batch) the server refused; it has been rolled back. */
  onWriteRejected(listener: (rejected: RejectedWrite) => void): () => void {
    this.#rejected.add(listener);
    return () => this.#rejected.delete(listener);
  }

  /** Settles when every queued write has been sent (or refused). */
  async waitForPendingWrites(): Promise<void> {
    await this.ready;
    while (this.#queue.length) {
      await new Promise<void>((resolve) => {
        const stop = this.onChange(() => (stop(), resolve()));
      });
    }
  }

  async get(path: string, online: () => Promise<Doc<unknown> | null>): Promise<Doc | null> {
    await this.ready;
    try {
      this.#store(path, (await online()) as Doc | null);
    } catch (error) {
      if (!unreachable(error)) throw error;
    }
    return this.#local(path);
  }

  async query(spec: QuerySpec, online: () => Promise<Page<never>>): Promise<Page<never>> {
    await this.ready;
    try {
      const page = await online();
      this.remember(page.docs, []);
      if (!this.#queue.length) return page;
    } catch (error) {
      if (!unreachable(error)) throw error;
    }
    return { docs: this.view({ query: { ...spec, cursor: undefined } }, null)!.docs as never[], cursor: null };
  }

  async write(write: BatchWrite, online: () => Promise<Doc<unknown> | null>): Promise<Doc | null> {
    await this.ready;
    if (!this.#queue.length) {
      try {
        const doc = (await online()) as Doc | null;
        this.#store(write.path, doc);
        return doc;
      } catch (error) {
        if (!unreachable(error)) throw error;
      }
    }
    const [after] = this.#check([write]);
    await this.#enqueue([write]);
    return after;
  }

  async batch(writes: BatchWrite[]): Promise<number[]> {
    await this.ready;
    if (!this.#queue.length) {
      try {
        const versions = await this.#send(writes);
        this.#settle(writes, versions);
        return versions;
      } catch (error) {
        if (!unreachable(error)) throw error;
      }
    }
    const after = this.#check(writes);
    await this.#enqueue(writes);
    return after.map((doc, index) => doc?.version ?? (this.#local(writes[index].path)?.version ?? 0));
  }

  remember(docs: Doc[], removed: string[]): void {
    for (const doc of docs) this.#store(doc.path, doc);
    for (const path of removed) this.#store(path, null);
  }

  view(target: Target, server: Doc[] | null): { docs: Doc[]; pending: boolean } | null {
    const matches = (doc: Doc) => ("doc" in target ? doc.path === target.doc : queryMatches(target.query, doc));
    const result = new Map<string, Doc>();
    if (server) for (const doc of server) result.set(doc.path, doc);
    else for (const doc of this.#docs.values()) if (matches(doc)) result.set(doc.path, doc);
    let pending = false;
    for (const path of this.#pendingPaths()) {
      if ("doc" in target ? path !== target.doc : !inTarget(target.query, path)) continue;
      const doc = this.#local(path);
      const had = result.delete(path);
      if (doc && matches(doc)) result.set(path, doc);
      pending ||= had || result.has(path);
    }
    const docs = [...result.values()];
    if ("query" in target) {
      docs.sort(queryOrder(target.query));
      docs.splice(target.query.limit ?? 100);
    }
    return { docs, pending };
  }

  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  poke(): void {
    this.#attempt = 0;
    clearTimeout(this.#retry);
    this.#retry = undefined;
    void this.#flush();
  }

  /** The document as the app sees it: the server's, with the queued writes applied. */
  #local(path: string): Doc | null {
    let doc = this.#docs.get(path) ?? null;
    for (const entry of this.#queue) {
      for (const write of entry.writes) {
        if (write.path !== path) continue;
        try {
          doc = applyWrite(doc, { ...write, if_version: undefined });
        } catch {
          // a write the server will refuse: it shows nothing until then
        }
      }
    }
    return doc;
  }

  #pendingPaths(): Set<string> {
    return new Set(this.#queue.flatMap((entry) => entry.writes.map((write) => write.path)));
  }

  /** The documents after `writes` on the local view, or the error the server would answer. */
  #check(writes: BatchWrite[]): (Doc | null)[] {
    const after = new Map<string, Doc | null>();
    return writes.map((write) => {
      const current = after.has(write.path) ? after.get(write.path)! : this.#local(write.path);
      if (write.op === "update" && !current && !this.#docs.has(write.path)) {
        throw new HearthError("unavailable", `\`${write.path}\` is not in the offline cache, and the server cannot be reached`);
      }
      const doc = applyWrite(current, write);
      after.set(write.path, doc);
      return doc;
    });
  }

  /** Keeps the server's `doc` at `path` (null: absent) unless an older version. */
  #store(path: string, doc: Doc | null): void {
    const known = this.#docs.get(path);
    if (doc && known && doc.version < known.version) return;
    if (doc) this.#docs.set(path, doc);
    else this.#docs.delete(path);
    void this.#persist((stores) => (doc ? stores.docs.put(doc) : stores.docs.delete(path))).catch(() => undefined);
  }

  async #enqueue(writes: BatchWrite[]): Promise<void> {
    const seq = Math.max(Date.now() * 1000, (this.#queue.at(-1)?.seq ?? 0) + 1);
    const entry = { seq, writes: writes.map((write) => ({ ...write })) };
    this.#queue.push(entry);
    await this.#persist((stores) => stores.queue.put(entry));
    this.#changed();
    void this.#flush();
  }

  /** Sends the queue, oldest first, many entries per request; alone, to find the one the server refuses. */
  async #flush(): Promise<void> {
    if (this.#sending || this.#closed || !this.#queue.length) return;
    this.#sending = true;
    try {
      await locked(`hearth.queue:${this.#name}`, async () => {
        await this.#reloadQueue(); // another tab may have sent some
        let alone = false;
        while (this.#queue.length && !this.#closed) {
          const entries: Entry[] = [];
          let count = 0;
          for (const entry of this.#queue) {
            if (entries.length && (alone || count + entry.writes.length > BATCH_WRITES)) break;
            entries.push(entry);
            count += entry.writes.length;
          }
          const writes = entries.flatMap((entry) => entry.writes);
          try {
            this.#settle(writes, await this.#send(writes));
            await this.#remove(entries);
          } catch (error) {
            if (unreachable(error)) return this.#later();
            if (entries.length > 1) {
              alone = true;
              continue;
            }
            await this.#remove(entries);
            const rejected = { writes, error: error as HearthError };
            this.#rejected.forEach((listener) => listener(rejected));
          }
          this.#attempt = 0;
        }
      });
    } finally {
      this.#sending = false;
    }
  }

  async #send(writes: BatchWrite[]): Promise<number[]> {
    const answer = await this.client.http.request<{ results: { version: number }[] }>("POST", "/v1/batch", { body: { writes } });
    return answer.results.map((result) => result.version);
  }

  /** What the server now holds after `writes` took effect with these versions. */
  #settle(writes: BatchWrite[], versions: number[]): void {
    writes.forEach((write, index) => {
      let doc: Doc | null = null;
      try {
        doc = applyWrite(this.#docs.get(write.path) ?? null, { ...write, if_version: undefined });
      } catch {
        // not known here: the next read or delivery brings it
      }
      if (doc) doc.version = versions[index];
      if (doc || write.op === "delete") this.#store(write.path, doc);
      else this.#docs.delete(write.path);
    });
  }

  async #remove(entries: Entry[]): Promise<void> {
    const sent = new Set(entries.map((entry) => entry.seq));
    this.#queue = this.#queue.filter((entry) => !sent.has(entry.seq));
    await this.#persist((stores) => entries.forEach((entry) => stores.queue.delete(entry.seq)));
    this.#changed();
  }

  #later(): void {
    const delay = Math.min(MAX_RETRY_MS, 250 * 2 ** this.#attempt++) * (0.5 + Math.random() / 2);
    clearTimeout(this.#retry);
    this.#retry = setTimeout(() => void this.#flush(), delay);
    (this.#retry as { unref?: () => void }).unref?.();
  }

  #changed(broadcast = true): void {
    if (broadcast) this.#channel?.postMessage("queue");
    this.#listeners.forEach((listener) => listener());
  }

  /** Opens the cache of `user` (null: signed out) and loads it. */
  async #open(user: string | null): Promise<void> {
    this.#db?.close();
    this.#channel?.close();
    this.#db = null;
    this.#docs = new Map();
    this.#queue = [];
    this.#name = `hearth.cache:${this.client.http.baseUrl}:${user ?? "-"}`;
    if (typeof BroadcastChannel !== "undefined") {
      this.#channel = new BroadcastChannel(this.#name);
      (this.#channel as { unref?: () => void }).unref?.();
      this.#channel.onmessage = () => void this.#reloadQueue().then(() => this.#changed(false));
    }
    if (typeof indexedDB !== "undefined") {
      this.#db = await openDatabase(this.#name, (db) => {
        db.createObjectStore("docs", { keyPath: "path" });
        db.createObjectStore("queue", { keyPath: "seq" });
      });
      const [docs, queue] = await Promise.all([all<Doc>(this.#db, "docs"), all<Entry>(this.#db, "queue")]);
      for (const doc of docs) this.#docs.set(doc.path, doc);
      this.#queue = queue;
    }
    this.#changed(false);
    void this.#flush();
  }

  async #reloadQueue(): Promise<void> {
    if (!this.#db) return;
    const queue = await all<Entry>(this.#db, "queue");
    // Documents another tab's writes touched may have been settled there: read them again.
    const touched = new Set([...this.#queue, ...queue].flatMap((entry) => entry.writes.map((write) => write.path)));
    this.#queue = queue;
    for (const path of touched) {
      const doc = await request<Doc | undefined>(this.#db.transaction("docs").objectStore("docs").get(path));
      if (doc && (this.#docs.get(path)?.version ?? 0) <= doc.version) this.#docs.set(path, doc);
    }
  }

  /** Runs `work` in the next IndexedDB transaction: what is asked within one task shares one (a snapshot of 1,000 documents is one transaction, not 1,000). */
  #persist(work: (stores: Stores) => void): Promise<void> {
    const db = this.#db;
    if (!db) return Promise.resolve();
    if (!this.#batch || this.#batch.db !== db) {
      const batch: Batch = { db, work: [], done: Promise.resolve() };
      batch.done = new Promise<void>((resolve, reject) => {
        setTimeout(() => {
          if (this.#batch === batch) this.#batch = undefined;
          const transaction = db.transaction(["docs", "queue"], "readwrite");
          const stores = { docs: transaction.objectStore("docs"), queue: transaction.objectStore("queue") };
          batch.work.forEach((step) => step(stores));
          committed(transaction).then(resolve, reject);
        }, 0);
      });
      this.#batch = batch;
    }
    this.#batch.work.push(work);
    return this.#batch.done;
  }
}

const all = <T>(db: IDBDatabase, store: string) => request<T[]>(db.transaction(store).objectStore(store).getAll());

/** Runs `work` alone among the tabs of the origin (Web Locks), or just runs it. */
function locked(name: string, work: () => Promise<void>): Promise<void> {
  const locks = (globalThis.navigator as Navigator | undefined)?.locks;
  return locks ? locks.request(name, work).then(() => undefined) : work();
}
