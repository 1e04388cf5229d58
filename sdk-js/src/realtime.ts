import { DocumentRef, Query, type DocsHost } from "./docs.js";
import { HearthError, type ErrorCode } from "./errors.js";
import type { Auth } from "./auth.js";
import type { Doc, DocumentData } from "./types.js";
import { queryOrder } from "./value.js";

/** One document entering, changing in or leaving a listener's result. */
export interface DocChange<T = DocumentData> {
  type: "added" | "modified" | "removed";
  /** As it is now; for `removed`, as it was last seen. */
  doc: Doc<T>;
}

/** A listener's result after a change. */
export interface Snapshot<T = DocumentData> {
  /** The whole result, in query order. */
  docs: Doc<T>[];
  /** For a document listener: the document, or null when absent or unreadable. */
  doc: Doc<T> | null;
  /** What changed since the previous snapshot; in the first, every document is `added`. */
  changes: DocChange<T>[];
  /** Whether this comes from the local cache rather than the server. */
  fromCache: boolean;
  /** Whether it shows local writes the server has not confirmed yet. */
  hasPendingWrites: boolean;
}

export type Unsubscribe = () => void;

/** A WebSocket constructor: the browser's, or (in Node 20) the `ws` package's. */
export type WebSocketLike = new (url: string) => WebSocket;

/** What live listeners need of their client. */
export interface RealtimeHost extends DocsHost {
  readonly auth: Auth;
  readonly serviceKey: string | undefined;
  readonly WebSocket: WebSocketLike | undefined;
  readonly closers: Set<() => void>;
}

import type { Target } from "./local.js";

interface Subscription {
  target: Target;
  order: (a: Doc, b: Doc) => number;
  /** The server's result, as last delivered. */
  view: Map<string, Doc>;
  /** Whether the server gave a result yet (else the offline cache stands in). */
  known: boolean;
  /** Whether the socket is up and the server has answered since it opened. */
  live: boolean;
  /** What the listener was last shown (with the offline cache: queued writes applied). */
  shown: Map<string, Doc>;
  /** Whether the listener was last shown queued writes. */
  pending: boolean;
  resume?: string;
  started: boolean;
  next: (snapshot: Snapshot<never>) => void;
  error?: (error: HearthError) => void;
}

export interface Member<S = unknown> {
  uid: string | null;
  state: S;
}

interface ChannelState {
  joined: boolean;
  presence: unknown;
  members: Map<string, Member>;
  presenceListeners: Set<(members: Map<string, Member>) => void>;
  broadcastListeners: Set<(event: string, payload: unknown) => void>;
}

const PING_EVERY_MS = 25_000;
const PONG_WITHIN_MS = 10_000;
const MAX_BACKOFF_MS = 5_000;
const CLOSE_TOO_SLOW = 4008;

const connections = new WeakMap<RealtimeHost, Connection>();

/** The one WebSocket of a client, shared by all its listeners and channels. */
function connection(host: RealtimeHost): Connection {
  let found = connections.get(host);
  if (!found) connections.set(host, (found = new Connection(host)));
  return found;
}

/**
 * Listens to a document or a query: `next` gets the result now and after every change,
 * with the changes. Over one WebSocket per client; after a network drop or a server
 * restart it reconnects (backoff with jitter) and resumes where it was, so nothing is
 * missed and nothing comes twice.
 */
export function onSnapshot<T = DocumentData>(
  target: DocumentRef<T> | Query<T>,
  next: (snapshot: Snapshot<T>) => void,
  error?: (error: HearthError) => void,
): Unsubscribe {
  const host = target.host as RealtimeHost;
  const spec: Target = target instanceof DocumentRef ? { doc: target.path } : { query: target.spec };
  const order = "query" in spec ? queryOrder(spec.query) : () => 0;
  return connection(host).subscribe({
    target: spec,
    order,
    view: new Map(),
    known: false,
    live: false,
    shown: new Map(),
    pending: false,
    started: false,
    next: next as (snapshot: Snapshot<never>) => void,
    error,
  });
}

/** The realtime channel `name` of a client: presence and broadcast (rules under `@channels/`). */
export function channel<S = unknown>(client: RealtimeHost, name: string): Channel<S> {
  return new Channel<S>(client, name);
}

/** A realtime channel: presence of its members and broadcast messages. */
export class Channel<S = unknown> {
  constructor(
    private readonly host: RealtimeHost,
    readonly name: string,
  ) {}

  /** Joins with a presence state (again: changes the state). */
  join(state: S): void {
    connection(this.host).join(this.name, state);
  }

  leave(): void {
    connection(this.host).leave(this.name);
  }

  /** Sends an ephemeral message to the other members. */
  broadcast(event: string, payload: unknown = null): void {
    connection(this.host).send({ op: "broadcast", channel: this.name, event, payload });
  }

  /** Calls `listener` with every member present (this one included), by member id, whenever that changes. */
  onPresence(listener: (members: Map<string, Member<S>>) => void): Unsubscribe {
    const state = connection(this.host).channel(this.name);
    const wrapped = listener as (members: Map<string, Member>) => void;
    state.presenceListeners.add(wrapped);
    return () => state.presenceListeners.delete(wrapped);
  }

  onBroadcast(listener: (event: string, payload: unknown) => void): Unsubscribe {
    const state = connection(this.host).channel(this.name);
    state.broadcastListeners.add(listener);
    return () => state.broadcastListeners.delete(listener);
  }
}

class Connection {
  #socket: WebSocket | undefined;
  #open = false;
  #subs = new Map<string, Subscription>();
  #channels = new Map<string, ChannelState>();
  #nextId = 1;
  #attempt = 0;
  #reconnect: ReturnType<typeof setTimeout> | undefined;
  #ping: ReturnType<typeof setInterval> | undefined;
  #pong: ReturnType<typeof setTimeout> | undefined;
  #uid: string | null | undefined;

  constructor(private readonly host: RealtimeHost) {
    host.auth.onTokenChanged(() => this.#tokenChanged());
    this.#watchLocal();
    const online = () => {
      if (!this.#open && this.#wanted()) this.#connectNow();
    };
    globalThis.addEventListener?.("online", online);
    host.closers.add(() => {
      globalThis.removeEventListener?.("online", online);
      this.#subs.clear();
      this.#channels.clear();
      clearTimeout(this.#reconnect);
      const socket = this.#socket;
      this.#drop();
      socket?.close(1000);
    });
  }

  /** With an offline cache: listeners show the queued writes, and answer from the cache until the server does. */
  #watchLocal(): void {
    const local = this.host.local;
    if (!local) return;
    local.onChange(() => this.#subs.forEach((sub) => sub.started && this.#emit(sub)));
  }

  subscribe(sub: Subscription): Unsubscribe {
    const id = `s${this.#nextId++}`;
    this.#subs.set(id, sub);
    void this.host.local?.ready.then(() => {
      if (this.#subs.get(id) === sub && !sub.known) this.#emit(sub);
    });
    if (this.#open) this.send(this.#subMessage(id, sub));
    else this.#ensure();
    return () => {
      if (this.#subs.delete(id) && this.#open) this.send({ op: "unsub", id });
      this.#idle();
    };
  }

  channel(name: string): ChannelState {
    let state = this.#channels.get(name);
    if (!state) {
      state = { joined: false, presence: null, members: new Map(), presenceListeners: new Set(), broadcastListeners: new Set() };
      this.#channels.set(name, state);
    }
    return state;
  }

  join(name: string, presence: unknown): void {
    const state = this.channel(name);
    state.joined = true;
    state.presence = presence;
    if (this.#open) this.send({ op: "join", channel: name, presence });
    else this.#ensure();
  }

  leave(name: string): void {
    const state = this.channel(name);
    state.joined = false;
    state.members.clear();
    if (this.#open) this.send({ op: "leave", channel: name });
    this.#idle();
  }

  send(message: object): void {
    if (this.#open) this.#socket!.send(JSON.stringify(message));
  }

  #wanted(): boolean {
    return this.#subs.size > 0 || [...this.#channels.values()].some((channel) => channel.joined);
  }

  #ensure(): void {
    if (!this.#socket && this.#reconnect === undefined) this.#connectNow();
  }

  /** Closes the socket a moment after the last listener left. */
  #idle(): void {
    setTimeout(() => {
      if (!this.#wanted() && this.#socket) {
        const socket = this.#socket;
        this.#drop();
        socket.close(1000);
      }
    }, 1_000);
  }

  #connectNow(): void {
    clearTimeout(this.#reconnect);
    this.#reconnect = undefined;
    const Socket = this.host.WebSocket ?? globalThis.WebSocket;
    if (!Socket) throw new HearthError("unavailable", "no WebSocket here: pass one in the client's options");
    const url = `${this.host.http.baseUrl.replace(/^http/, "ws")}/v1/realtime`;
    const socket = new Socket(url);
    this.#socket = socket;
    socket.onopen = () => void this.#opened(socket);
    socket.onmessage = (event: MessageEvent) => this.#received(String(event.data));
    socket.onclose = (event: CloseEvent) => {
      if (this.#socket !== socket) return;
      this.#drop();
      if (this.#wanted()) this.#retry(event.code === CLOSE_TOO_SLOW);
    };
    socket.onerror = () => socket.close();
  }

  async #opened(socket: WebSocket): Promise<void> {
    let token: string | null;
    try {
      token = await this.#token(false);
    } catch {
      // No fresh token now (the server is away mid-refresh): subscribing without one
      // would end every listener with permission-denied. Close, and try again later.
      socket.close(4000, "no token");
      return;
    }
    if (this.#socket !== socket) return;
    this.#uid = this.host.auth.currentUser?.id ?? null;
    this.#open = true;
    this.#attempt = 0;
    this.host.local?.poke();
    if (token) this.send({ op: "auth", token });
    for (const [id, sub] of this.#subs) this.send(this.#subMessage(id, sub));
    for (const [name, channel] of this.#channels) {
      channel.members.clear();
      if (channel.joined) this.send({ op: "join", channel: name, presence: channel.presence });
    }
    this.#ping = setInterval(() => {
      this.send({ op: "ping" });
      this.#pong ??= setTimeout(() => socket.close(4000, "no pong"), PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  #drop(): void {
    this.#socket = undefined;
    this.#open = false;
    for (const sub of this.#subs.values()) sub.live = false;
    clearInterval(this.#ping);
    clearTimeout(this.#pong);
    this.#pong = undefined;
  }

  #retry(soon: boolean): void {
    const ceiling = Math.min(MAX_BACKOFF_MS, 100 * 2 ** this.#attempt++);
    const delay = soon ? 0 : 50 + Math.random() * ceiling;
    this.#reconnect = setTimeout(() => this.#connectNow(), delay);
  }

  #token(force: boolean): Promise<string | null> {
    return this.host.serviceKey ? Promise.resolve(this.host.serviceKey) : this.host.auth.getToken(force);
  }

  #subMessage(id: string, sub: Subscription): object {
    return { op: "sub", id, ...sub.target, ...(sub.resume ? { resume: sub.resume } : {}) };
  }

  /** A refreshed token goes to the server; another user (or none) starts over on a new socket. */
  #tokenChanged(): void {
    if (!this.#open || this.host.serviceKey) return;
    const uid = this.host.auth.currentUser?.id ?? null;
    if (uid !== null && uid === this.#uid) {
      void this.#token(false).then((token) => token && this.send({ op: "auth", token }));
      return;
    }
    for (const sub of this.#subs.values()) sub.resume = undefined;
    const socket = this.#socket!;
    this.#drop();
    socket.close(1000);
    this.#connectNow();
  }

  #received(text: string): void {
    clearTimeout(this.#pong);
    this.#pong = undefined;
    const message = JSON.parse(text) as {
      op: string;
      id?: string;
      docs?: Doc[];
      changes?: DocChange[];
      resume?: string;
      code?: ErrorCode;
      message?: string;
      channel?: string;
      joins?: Record<string, Member>;
      leaves?: Record<string, Member>;
      event?: string;
      payload?: unknown;
    };
    const sub = message.id === undefined ? undefined : this.#subs.get(message.id);
    switch (message.op) {
      case "snapshot":
        if (sub) this.#snapshot(sub, message.docs ?? [], message.resume);
        break;
      case "changes":
        if (sub) this.#changes(sub, message.changes ?? [], message.resume);
        break;
      case "error":
        if (sub) {
          this.#subs.delete(message.id!);
          sub.error?.(new HearthError(message.code ?? "internal", message.message ?? ""));
        } else if (message.code === "unauthenticated") {
          // The token expired: deliveries wait until a fresh one arrives.
          void this.#token(true).then((token) => token && this.send({ op: "auth", token }));
        }
        break;
      case "presence":
        this.#presence(message.channel!, message.joins ?? {}, message.leaves ?? {});
        break;
      case "broadcast":
        this.#channels.get(message.channel!)?.broadcastListeners.forEach((listener) => listener(message.event!, message.payload));
        break;
    }
  }

  /** A whole result: the first, or a fresh one after a resume the server could not serve, told as the difference. */
  #snapshot(sub: Subscription, docs: Doc[], resume: string | undefined): void {
    sub.resume = resume;
    const fresh = new Map(docs.map((doc) => [doc.path, doc]));
    const removed = [...sub.view.keys()].filter((path) => !fresh.has(path));
    sub.view = fresh;
    this.#delivered(sub, docs, removed);
  }

  #changes(sub: Subscription, changes: DocChange[], resume: string | undefined): void {
    sub.resume = resume;
    for (const change of changes) {
      if (change.type === "removed") sub.view.delete(change.doc.path);
      else sub.view.set(change.doc.path, change.doc);
    }
    const kept = changes.filter((change) => change.type !== "removed").map((change) => change.doc);
    this.#delivered(sub, kept, changes.filter((change) => change.type === "removed").map((change) => change.doc.path));
  }

  #delivered(sub: Subscription, docs: Doc[], removed: string[]): void {
    const first = !sub.live;
    sub.known = sub.live = true;
    // Only a document listener knows that a removed document is gone (a query's may just no longer match).
    this.host.local?.remember(docs, "doc" in sub.target ? removed : []);
    this.#emit(sub, first);
  }

  /** Shows the listener what changed since it was last shown, if anything did (or `always`). */
  #emit(sub: Subscription, always = false): void {
    const local = this.host.local?.view(sub.target, sub.known ? [...sub.view.values()] : null);
    const docs = local?.docs ?? [...sub.view.values()].sort(sub.order);
    const changes: DocChange[] = [];
    const now = new Map(docs.map((doc) => [doc.path, doc]));
    for (const [path, doc] of sub.shown) if (!now.has(path)) changes.push({ type: "removed", doc });
    for (const doc of docs) {
      const before = sub.shown.get(doc.path);
      if (!before) changes.push({ type: "added", doc });
      else if (!same(before, doc)) changes.push({ type: "modified", doc });
    }
    const pending = local?.pending ?? false;
    // A change of `hasPendingWrites` alone is shown too: the app may say "saved" now.
    if (!changes.length && sub.started && !always && pending === sub.pending) return;
    sub.shown = now;
    sub.started = true;
    sub.pending = pending;
    const snapshot = { docs, doc: docs[0] ?? null, changes, fromCache: !sub.live, hasPendingWrites: pending };
    sub.next(snapshot as Snapshot<never>);
  }

  #presence(name: string, joins: Record<string, Member>, leaves: Record<string, Member>): void {
    const channel = this.#channels.get(name);
    if (!channel) return;
    for (const member of Object.keys(leaves)) channel.members.delete(member);
    for (const [member, state] of Object.entries(joins)) channel.members.set(member, state);
    const members = new Map(channel.members);
    channel.presenceListeners.forEach((listener) => listener(members));
  }
}

function same(a: Doc, b: Doc): boolean {
  return a.version === b.version && a.updated_at === b.updated_at && JSON.stringify(a.data) === JSON.stringify(b.data);
}
