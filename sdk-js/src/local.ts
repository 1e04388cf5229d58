// What documents, queries and listeners ask of an offline cache (`enableOffline`), as
// interfaces only: a client without the cache ships none of it.
import type { BatchWrite, Page } from "./docs.js";
import type { Doc, QuerySpec } from "./types.js";

export type Target = { doc: string } | { query: QuerySpec };

export interface LocalCache {
  /** Settles once the signed-in user's cache is loaded. */
  readonly ready: Promise<void>;
  /** A document read: from the server, and from the cache when it cannot be reached. */
  get(path: string, online: () => Promise<Doc<unknown> | null>): Promise<Doc | null>;
  /** A query page: from the server, and evaluated over the cache when it cannot be reached. */
  query(spec: QuerySpec, online: () => Promise<Page<never>>): Promise<Page<never>>;
  /** One document write: through `online` while no earlier write waits, else (or when the server cannot be reached) queued. */
  write(write: BatchWrite, online: () => Promise<Doc<unknown> | null>): Promise<Doc | null>;
  /** A batch, the same way; the versions it leaves. */
  batch(writes: BatchWrite[]): Promise<number[]>;

  /** Documents the server delivered to a listener. */
  remember(docs: Doc[], removed: string[]): void;
  /** What the app should see of `target`, given the server's result (null: none yet): the queued writes applied. */
  view(target: Target, server: Doc[] | null): { docs: Doc[]; pending: boolean } | null;
  /** Called whenever the queued writes change, here or in another tab. */
  onChange(listener: () => void): () => void;
  /** The server may be reachable again: send what waits. */
  poke(): void;
}
