import { Auth } from "./auth.js";
import { CollectionRef, DocumentRef, Query, WriteBatch, runTransaction, type Transaction } from "./docs.js";
import { Http } from "./http.js";
import type { RealtimeHost, WebSocketLike } from "./realtime.js";
import { defaultStorage, indexedDBStorage, memoryStorage, webStorage, type KeyValueStore } from "./storage.js";
import type { DocumentData } from "./types.js";

export interface ClientOptions {
  /** Where the session is kept: IndexedDB (the browser default), `local` (localStorage), `memory` (the default elsewhere), or any store. */
  persistence?: "indexeddb" | "local" | "memory" | KeyValueStore;
  /** A service key (`hk_…`), for trusted code only: it bypasses the rules. */
  serviceKey?: string;
  /** The WebSocket to use where there is no global one (Node 20: the `ws` package). */
  WebSocket?: WebSocketLike;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  /** How long a request may wait for its answer before it fails as `unavailable` (default 30 s). */
  timeoutMs?: number;
}

/** A client of one Hearth server: auth, documents, queries, batches, transactions, functions; with {@link onSnapshot} and {@link channel}, live data. */
export class Hearth implements RealtimeHost {
  readonly http: Http;
  readonly auth: Auth;
  readonly serviceKey: string | undefined;
  readonly WebSocket: WebSocketLike | undefined;
  /** @internal What {@link close} stops besides auth (the realtime socket, once opened). */
  readonly closers = new Set<() => void>();

  constructor(url: string, options: ClientOptions = {}) {
    this.http = new Http(url.replace(/\/+$/, ""), options.fetch ?? globalThis.fetch.bind(globalThis), options.timeoutMs);
    this.auth = new Auth(this.http, storageOf(options.persistence));
    this.serviceKey = options.serviceKey;
    this.WebSocket = options.WebSocket;
    const key = options.serviceKey;
    this.http.credential = key ? async () => key : (force) => this.auth.getToken(force);
  }

  doc<T = DocumentData>(path: string): DocumentRef<T> {
    return new DocumentRef<T>(this, path);
  }

  collection<T = DocumentData>(path: string): CollectionRef<T> {
    return new CollectionRef<T>(this, path);
  }

  /** Every collection with this id, at any depth. */
  collectionGroup<T = DocumentData>(id: string): Query<T> {
    return new Query<T>(this, { collection_group: id });
  }

  batch(): WriteBatch {
    return new WriteBatch(this);
  }

  /** Reads and writes that commit together, run again when a document read changed meanwhile. */
  runTransaction<R>(work: (transaction: Transaction) => Promise<R>, options: { attempts?: number } = {}): Promise<R> {
    return runTransaction(this, work, options.attempts);
  }

  /** Calls the callable function `name`; its result. */
  async call<R = unknown>(name: string, data: unknown = null): Promise<R> {
    return (await this.http.request<{ result: R }>("POST", `/v1/functions/${encodeURIComponent(name)}`, { body: { data } })).result;
  }

  /** Replaces the rules (service key only). */
  async setRules(rules: string): Promise<void> {
    await this.http.request("PUT", "/v1/admin/rules", { text: rules });
  }

  /** Deploys a functions module (service key only). */
  deployFunction(file: string, source: string): Promise<{ functions: { name: string; kind: string }[] }> {
    return this.http.request("PUT", `/v1/admin/functions/${encodeURIComponent(file)}`, { text: source });
  }

  /** Closes the realtime socket and stops the client's timers (for scripts and tests that end). */
  close(): void {
    this.closers.forEach((close) => close());
    this.auth.close();
  }
}

function storageOf(persistence: ClientOptions["persistence"]): KeyValueStore {
  switch (persistence) {
    case undefined:
      return defaultStorage();
    case "indexeddb":
      return indexedDBStorage();
    case "local":
      return webStorage();
    case "memory":
      return memoryStorage();
    default:
      return persistence;
  }
}

/** A client of the Hearth server at `url` (`https://api.example.com`, or the page's own origin). */
export function createClient(url: string, options?: ClientOptions): Hearth {
  return new Hearth(url, options);
}
