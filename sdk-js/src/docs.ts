import { HearthError } from "./errors.js";
import { newId } from "./eval.js";
import type { Http } from "./http.js";
import type { LocalCache } from "./local.js";
import type { Doc, DocumentData, Filter, Op, QuerySpec } from "./types.js";

/** A precondition: the write happens only if the stored document is at this version. */
export interface WriteOptions {
  ifVersion?: number;
}

/** One page of a query's answer; `cursor` continues after it (null: no more). */
export interface Page<T> {
  docs: Doc<T>[];
  cursor: string | null;
}

export interface AggregateResult {
  count?: number;
  sum?: Record<string, number>;
  avg?: Record<string, number | null>;
}

/** What documents and queries need of their client. */
export interface DocsHost {
  readonly http: Http;
  /** The offline cache, once `enableOffline` made one. */
  local?: LocalCache;
}

/** A path without leading or trailing slashes. */
const trimSlashes = (path: string) => path.replace(/^\/+|\/+$/g, "");

const ifMatch = (options: WriteOptions): Record<string, string> =>
  options.ifVersion === undefined ? {} : { "if-match": String(options.ifVersion) };

/** A document by path (`rooms/r1`), which may or may not exist. */
export class DocumentRef<T = DocumentData> {
  readonly id: string;

  constructor(
    readonly host: DocsHost,
    readonly path: string,
  ) {
    this.path = trimSlashes(path);
    this.id = this.path.slice(this.path.lastIndexOf("/") + 1);
  }

  /** A sub-collection of this document. */
  collection<U = DocumentData>(name: string): CollectionRef<U> {
    return new CollectionRef<U>(this.host, `${this.path}/${name}`);
  }

  /** The document, or null when it does not exist. */
  async get(): Promise<Doc<T> | null> {
    const online = async () => {
      try {
        return await this.host.http.request<Doc<T>>("GET", `/v1/docs/${this.path}`);
      } catch (error) {
        if (error instanceof HearthError && error.code === "not-found") return null;
        throw error;
      }
    };
    return this.host.local ? ((await this.host.local.get(this.path, online)) as Doc<T> | null) : online();
  }

  /** Creates or replaces the document. */
  async set(data: T, options: WriteOptions = {}): Promise<Doc<T>> {
    const online = () => this.host.http.request<Doc<T>>("PUT", `/v1/docs/${this.path}`, { body: data, headers: ifMatch(options) });
    return (await this.#write({ op: "set", path: this.path, data, if_version: options.ifVersion }, online))!;
  }

  /** Creates the document; `already-exists` if it does. */
  async create(data: T): Promise<Doc<T>> {
    const online = () => this.host.http.request<Doc<T>>("PUT", `/v1/docs/${this.path}`, { body: data, headers: { "if-none-match": "*" } });
    return (await this.#write({ op: "create", path: this.path, data }, online))!;
  }

  /** Deep-merges `patch` (null removes a field; transforms such as {@link increment} apply). */
  async update(patch: Partial<T> | DocumentData, options: WriteOptions = {}): Promise<Doc<T>> {
    const online = () => this.host.http.request<Doc<T>>("PATCH", `/v1/docs/${this.path}`, { body: patch, headers: ifMatch(options) });
    return (await this.#write({ op: "update", path: this.path, data: patch, if_version: options.ifVersion }, online))!;
  }

  /** Deletes the document (nothing happens when it is absent). */
  async delete(options: WriteOptions = {}): Promise<void> {
    const online = async () => (await this.host.http.request("DELETE", `/v1/docs/${this.path}`, { headers: ifMatch(options) }), null);
    await this.#write({ op: "delete", path: this.path, if_version: options.ifVersion }, online);
  }

  #write(write: BatchWrite, online: () => Promise<Doc<T> | null>): Promise<Doc<T> | null> {
    if (write.if_version === undefined) delete write.if_version;
    return this.host.local ? (this.host.local.write(write, online) as Promise<Doc<T> | null>) : online();
  }
}

/** A query: build it with `where`, `orderBy`, `limit`, `startAfter` (each returns a new query). */
export class Query<T = DocumentData> {
  constructor(
    readonly host: DocsHost,
    readonly spec: QuerySpec,
  ) {}

  where(field: string, op: Op, value: unknown): Query<T> {
    const filter: Filter = { field, op, value };
    return new Query(this.host, { ...this.spec, where: [...(this.spec.where ?? []), filter] });
  }

  orderBy(field: string, dir: "asc" | "desc" = "asc"): Query<T> {
    return new Query(this.host, { ...this.spec, order_by: [...(this.spec.order_by ?? []), { field, dir }] });
  }

  limit(limit: number): Query<T> {
    return new Query(this.host, { ...this.spec, limit });
  }

  /** Continues after the page that gave `cursor`. */
  startAfter(cursor: string): Query<T> {
    return new Query(this.host, { ...this.spec, cursor });
  }

  /** One page of the answer (from the offline cache, when there is one and the server cannot be reached). */
  get(): Promise<Page<T>> {
    const online = () => this.host.http.request<Page<T>>("POST", "/v1/query", { body: this.spec });
    return this.host.local ? (this.host.local.query(this.spec, online as () => Promise<Page<never>>) as Promise<Page<T>>) : online();
  }

  /** Every page, one after the other. */
  async *pages(): AsyncGenerator<Page<T>> {
    let page = await this.get();
    yield page;
    while (page.cursor) {
      page = await this.startAfter(page.cursor).get();
      yield page;
    }
  }

  /** Every document of the answer, page by page. */
  async getAll(): Promise<Doc<T>[]> {
    const docs: Doc<T>[] = [];
    for await (const page of this.pages()) docs.push(...page.docs);
    return docs;
  }

  async count(): Promise<number> {
    return (await this.aggregate({ count: true })).count ?? 0;
  }

  /** Count, sums and averages of number fields over the whole answer (its limit aside). */
  aggregate(spec: { count?: boolean; sum?: string[]; avg?: string[] }): Promise<AggregateResult> {
    const { limit: _limit, cursor: _cursor, ...query } = this.spec;
    return this.host.http.request("POST", "/v1/aggregate", { body: { query, ...spec } });
  }
}

/** A collection (`rooms`, `rooms/r1/messages`): a query over its documents, and where new ones go. */
export class CollectionRef<T = DocumentData> extends Query<T> {
  constructor(
    host: DocsHost,
    readonly path: string,
  ) {
    super(host, { collection: trimSlashes(path) });
    this.path = this.spec.collection!;
  }

  doc(id: string): DocumentRef<T> {
    return new DocumentRef<T>(this.host, `${this.path}/${id}`);
  }

  /** Creates a document with a new id (ids sort by creation time; made here when offline writes are on). */
  add(data: T): Promise<Doc<T>> {
    if (this.host.local) return this.doc(newId()).create(data);
    return this.host.http.request("POST", `/v1/docs/${this.path}`, { body: data });
  }
}

export interface BatchWrite {
  op: "create" | "set" | "update" | "delete";
  path: string;
  data?: unknown;
  if_version?: number;
}

/** Writes that commit all together or not at all (at most 500). */
export class WriteBatch {
  readonly writes: BatchWrite[] = [];

  constructor(private readonly host: DocsHost) {}

  create(path: string, data: DocumentData): this {
    return this.#add({ op: "create", path, data });
  }

  set(path: string, data: DocumentData, options: WriteOptions = {}): this {
    return this.#add({ op: "set", path, data, if_version: options.ifVersion });
  }

  update(path: string, patch: DocumentData, options: WriteOptions = {}): this {
    return this.#add({ op: "update", path, data: patch, if_version: options.ifVersion });
  }

  delete(path: string, options: WriteOptions = {}): this {
    return this.#add({ op: "delete", path, if_version: options.ifVersion });
  }

  /** The version of each document after the batch (in write order). */
  async commit(): Promise<number[]> {
    if (this.host.local) return this.host.local.batch(this.writes);
    const answer = await this.host.http.request<{ results: { path: string; version: number }[] }>("POST", "/v1/batch", {
      body: { writes: this.writes },
    });
    return answer.results.map((result) => result.version);
  }

  #add(write: BatchWrite): this {
    write.path = trimSlashes(write.path);
    if (write.if_version === undefined) delete write.if_version;
    this.writes.push(write);
    return this;
  }
}

/** Reads that guard the writes queued after them: the commit fails if a document read changed since. */
export class Transaction {
  readonly #read = new Map<string, number>();
  readonly #batch: WriteBatch;

  constructor(private readonly host: DocsHost) {
    this.#batch = new WriteBatch(host);
  }

  async get<T = DocumentData>(path: string): Promise<Doc<T> | null> {
    const doc = await new DocumentRef<T>(this.host, path).get();
    this.#read.set(doc?.path ?? trimSlashes(path), doc?.version ?? 0);
    return doc;
  }

  set(path: string, data: DocumentData): this {
    const version = this.#version(path);
    if (version === 0) this.#batch.create(path, data);
    else this.#batch.set(path, data, { ifVersion: version });
    return this;
  }

  update(path: string, patch: DocumentData): this {
    this.#batch.update(path, patch, { ifVersion: this.#version(path) || undefined });
    return this;
  }

  delete(path: string): this {
    this.#batch.delete(path, { ifVersion: this.#version(path) || undefined });
    return this;
  }

  /** @internal */
  commit(): Promise<number[]> {
    return this.#batch.writes.length ? this.#batch.commit() : Promise.resolve([]);
  }

  #version(path: string): number | undefined {
    return this.#read.get(trimSlashes(path));
  }
}

/** Runs `work` and commits its writes; when a document it read changed meanwhile, runs it again (up to `attempts` times). */
export async function runTransaction<R>(host: DocsHost, work: (transaction: Transaction) => Promise<R>, attempts = 5): Promise<R> {
  for (let attempt = 1; ; attempt++) {
    const transaction = new Transaction(host);
    const result = await work(transaction);
    try {
      await transaction.commit();
      return result;
    } catch (error) {
      const conflict = error instanceof HearthError && (error.code === "failed-precondition" || error.code === "already-exists");
      if (!conflict || attempt >= attempts) throw error;
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 20 * 2 ** attempt));
    }
  }
}

/** Transforms, for `update`, `set` and batches. */
export const increment = (by: number) => ({ $increment: by });
export const serverTime = () => ({ $server_time: true as const });
export const arrayUnion = (...items: unknown[]) => ({ $array_union: items });
export const arrayRemove = (...items: unknown[]) => ({ $array_remove: items });
