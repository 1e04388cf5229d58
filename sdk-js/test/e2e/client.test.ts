// The client against the real server, in Node (the `ws` package as its WebSocket).
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, test } from "node:test";

import WebSocket from "ws";

import {
  HearthError,
  channel,
  type Hearth,
  createClient,
  increment,
  memoryStorage,
  onSnapshot,
  type Doc,
  type Member,
  type Snapshot,
  type WebSocketLike,
} from "../../src/index.js";
import { KEY, Server, eventually } from "../harness.js";

const RULES = `
["rooms/{room}"]
read = "auth != null"
create = "auth != null && request.data.owner == auth.uid"
update = "auth != null && resource.data.owner == auth.uid"
delete = "auth != null && resource.data.owner == auth.uid"

["rooms/{room}/messages/{message}"]
read = "auth != null"
create = "auth != null && request.data.author == auth.uid"

["counters/{id}"]
read = "true"
write = "auth != null"

["@channels/{name}"]
join = "auth != null"
broadcast = "auth != null"
`;

const FUNCTION = `import { onCall } from "hearth";
export const greet = onCall(async (data, ctx) => ({ hello: data.name, uid: ctx.auth ? ctx.auth.uid : null }));
`;

let server: Server;
const options = () => ({ persistence: memoryStorage(), WebSocket: WebSocket as unknown as WebSocketLike });
const opened: Hearth[] = [];
const client = () => {
  const hearth = createClient(server.url, options());
  opened.push(hearth);
  return hearth;
};

before(async () => {
  server = await Server.start({ rules: RULES });
  const admin = createClient(server.url, { serviceKey: KEY });
  await admin.deployFunction("greet.js", FUNCTION);
  admin.close();
});
after(async () => {
  opened.forEach((hearth) => hearth.close());
  await server.close();
});

async function signedUp(name: string) {
  const hearth = client();
  await hearth.auth.signUp(`${name}-${Math.random().toString(36).slice(2)}@example.com`, "correct horse battery staple");
  return hearth;
}

/** Two users: one who owns a new room and writes in it, one who reads it. */
async function liveRoom(name: string) {
  const writer = await signedUp(`${name}-writer`);
  const reader = await signedUp(`${name}-reader`);
  const uid = writer.auth.currentUser!.id;
  const room = `rooms/${name}-${uid}`;
  await writer.doc(room).set({ owner: uid, title: name, size: 0 });
  return { writer, reader, uid, room };
}

test("sign-up, sign-in, refresh and sign-out", async () => {
  const hearth = client();
  const states: (string | null)[] = [];
  hearth.auth.onAuthStateChanged((user) => states.push(user?.email ?? null));
  const email = `ada-${Date.now()}@example.com`;
  const user = await hearth.auth.signUp(email, "correct horse battery staple");
  assert.equal(user.email, email);
  const first = await hearth.auth.getToken();
  const second = await hearth.auth.getToken(true);
  assert.ok(first && second, "a forced refresh keeps the session");
  assert.equal((await hearth.auth.reloadUser()).id, user.id);
  await hearth.auth.signOut();
  assert.equal(hearth.auth.currentUser, null);
  const wrong = await hearth.auth.signIn(email, "wrong password").catch((error: unknown) => error);
  assert.ok(wrong instanceof HearthError && wrong.code === "unauthenticated" && wrong.status === 401, String(wrong));
  const again = await hearth.auth.signIn(email, "correct horse battery staple");
  assert.ok(!again.mfaRequired && again.user.id === user.id);
  await eventually(() => states.length === 4, "four auth states");
  assert.deepEqual(states, [null, email, null, email]);
  hearth.close();
});

test("documents, queries, pages, aggregates, batches and typed errors", async () => {
  const hearth = await signedUp("bo");
  const uid = hearth.auth.currentUser!.id;
  interface Room {
    owner: string;
    title: string;
    size: number;
  }
  const rooms = hearth.collection<Room>("rooms");
  const created = await rooms.doc("r1").create({ owner: uid, title: "Rust", size: 3 });
  assert.equal(created.version, 1);
  const exists = await rooms.doc("r1").create({ owner: uid, title: "again", size: 0 }).catch((error: unknown) => error);
  assert.ok(exists instanceof HearthError && exists.code === "already-exists");
  const added = await rooms.add({ owner: uid, title: "Go", size: 4 });
  assert.equal(added.id.length, 20);
  await rooms.doc("r3").set({ owner: uid, title: "Zig", size: 1 });
  const patched = await rooms.doc("r1").update({ size: increment(2) }, { ifVersion: 1 });
  assert.equal(patched.data.size, 5);
  const stale = await rooms.doc("r1").update({ size: 0 }, { ifVersion: 1 }).catch((error: unknown) => error);
  assert.ok(stale instanceof HearthError && stale.code === "failed-precondition" && stale.status === 412);
  const denied = await rooms.doc("r4").set({ owner: "someone-else", title: "x", size: 0 }).catch((error: unknown) => error);
  assert.ok(denied instanceof HearthError && denied.code === "permission-denied");

  const mine = rooms.where("owner", "==", uid);
  const page = await mine.orderBy("size", "desc").limit(2).get();
  assert.deepEqual(page.docs.map((doc) => doc.data.title), ["Rust", "Go"]);
  assert.ok(page.cursor);
  const rest = await mine.orderBy("size", "desc").limit(2).startAfter(page.cursor!).get();
  assert.deepEqual(rest.docs.map((doc) => doc.data.title), ["Zig"]);
  assert.equal((await mine.limit(1).getAll()).length, 3);
  assert.equal(await mine.count(), 3);
  assert.deepEqual(await mine.aggregate({ sum: ["size"] }), { sum: { size: 10 } });

  const versions = await hearth
    .batch()
    .update("rooms/r1", { title: "Rust!" })
    .create(`rooms/r1/messages/m1`, { author: uid, text: "hi" })
    .commit();
  assert.deepEqual(versions, [3, 1]);
});

test("a batch with a failed precondition commits nothing", async () => {
  const hearth = await signedUp("cy");
  const uid = hearth.auth.currentUser!.id;
  await hearth.doc(`rooms/c-${uid}`).set({ owner: uid, title: "one", size: 1 });
  const error = await hearth
    .batch()
    .update(`rooms/c-${uid}`, { title: "two" })
    .update(`rooms/c-${uid}`, { title: "three" }, { ifVersion: 9 })
    .commit()
    .catch((failure: unknown) => failure);
  assert.ok(error instanceof HearthError && error.code === "failed-precondition", String(error));
  assert.equal((await hearth.doc(`rooms/c-${uid}`).get())!.data.title, "one");
  assert.equal(await hearth.doc("rooms/absent").get(), null);
});

test("transactions run again when what they read changed", async () => {
  const one = await signedUp("dee");
  const two = await signedUp("eve");
  await one.doc("counters/c").set({ n: 0 });
  let runs = 0;
  await Promise.all(
    [one, two, one, two].map((hearth) =>
      hearth.runTransaction(async (transaction) => {
        runs++;
        const doc = await transaction.get<{ n: number }>("counters/c");
        transaction.set("counters/c", { n: doc!.data.n + 1 });
      }),
    ),
  );
  assert.equal(((await one.doc("counters/c").get())!.data as { n: number }).n, 4, "no increment lost");
  assert.ok(runs >= 4);
});

test("functions are called with the caller", async () => {
  const hearth = await signedUp("fay");
  assert.deepEqual(await hearth.call("greet", { name: "Fay" }), { hello: "Fay", uid: hearth.auth.currentUser!.id });
  const missing = await hearth.call("nope").catch((error: unknown) => error);
  assert.ok(missing instanceof HearthError && missing.code === "not-found");
});

test("a live query gets its result, then each change once, in order", async () => {
  const { writer, reader, uid, room } = await liveRoom("live");
  const snapshots: Snapshot[] = [];
  const stop = onSnapshot(reader.collection(`${room}/messages`).orderBy("n"), (snapshot) => snapshots.push(snapshot));
  await eventually(() => snapshots.length === 1, "the first snapshot");
  assert.deepEqual(snapshots[0].docs, []);
  for (let n = 0; n < 5; n++) await writer.doc(`${room}/messages/m${n}`).set({ author: uid, n });
  await eventually(() => snapshots.at(-1)!.docs.length === 5, "five messages");
  const added = snapshots.flatMap((snapshot) => snapshot.changes.map((change) => `${change.type}:${change.doc.id}`));
  assert.deepEqual(added, ["added:m0", "added:m1", "added:m2", "added:m3", "added:m4"]);
  assert.deepEqual(snapshots.at(-1)!.docs.map((doc: Doc) => doc.data.n), [0, 1, 2, 3, 4]);
  stop();
  writer.close();
  reader.close();
});

test("a document listener sees it created, changed and deleted, and a denied query errs", async () => {
  const hearth = await signedUp("ida");
  const uid = hearth.auth.currentUser!.id;
  const ref = hearth.doc(`rooms/doc-${uid}`);
  const seen: string[] = [];
  const stop = onSnapshot(ref, (snapshot) => seen.push(snapshot.doc ? `${snapshot.changes[0]?.type ?? "none"}:${snapshot.doc.data.size}` : "absent"));
  await eventually(() => seen.length === 1, "the first snapshot");
  await ref.set({ owner: uid, title: "t", size: 1 });
  await ref.update({ size: 2 });
  await ref.delete();
  await eventually(() => seen.length === 4, "three changes");
  assert.deepEqual(seen, ["absent", "added:1", "modified:2", "absent"]);
  stop();
  const stranger = client();
  const error = await new Promise<HearthError>((resolve) => onSnapshot(stranger.collection("rooms"), () => undefined, resolve));
  assert.equal(error.code, "permission-denied");
});

test("presence and broadcast reach the members", async () => {
  const ann = await signedUp("ann");
  const ben = await signedUp("ben");
  const room = `room:${Date.now()}`;
  const annSees: Map<string, Member<{ name: string }>>[] = [];
  const benHears: unknown[] = [];
  channel<{ name: string }>(ann, room).onPresence((members) => annSees.push(members));
  channel(ben, room).onBroadcast((event, payload) => benHears.push([event, payload]));
  channel(ann, room).join({ name: "Ann" });
  channel(ben, room).join({ name: "Ben" });
  await eventually(() => annSees.at(-1)?.size === 2, "both present");
  const names = [...annSees.at(-1)!.values()].map((member) => member.state.name).sort();
  assert.deepEqual(names, ["Ann", "Ben"]);
  channel(ann, room).broadcast("typing", { who: "Ann" });
  await eventually(() => benHears.length === 1, "the broadcast");
  assert.deepEqual(benHears, [["typing", { who: "Ann" }]]);
  channel(ben, room).leave();
  await eventually(() => annSees.at(-1)?.size === 1, "Ben gone");
});

test("listeners resume across a server restart without losing or repeating a change", async () => {
  const { writer, reader, uid, room } = await liveRoom("restart");
  const changes: string[] = [];
  let last: Snapshot | undefined;
  onSnapshot(reader.collection(`${room}/messages`), (snapshot) => {
    last = snapshot;
    changes.push(...snapshot.changes.map((change) => `${change.type}:${change.doc.id}`));
  });
  await writer.doc(`${room}/messages/a`).set({ author: uid });
  await eventually(() => changes.length === 1, "the first message");
  await server.stop();
  await server.run();
  for (const id of ["b", "c", "d"]) await writer.doc(`${room}/messages/${id}`).set({ author: uid });
  await eventually(() => changes.length >= 4, "the messages written after the restart", 15_000);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(changes, ["added:a", "added:b", "added:c", "added:d"]);
  assert.deepEqual(last!.docs.map((doc) => doc.id), ["a", "b", "c", "d"]);
});

/** The RFC 6238 code of a base32 secret now. */
function totp(secret: string): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const char of secret.replace(/=+$/, "")) bits += alphabet.indexOf(char.toUpperCase()).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g)!.map((byte) => parseInt(byte, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 30_000)));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

test("a user with TOTP on signs in in two steps", async () => {
  const hearth = client();
  const email = `mfa-${Date.now()}@example.com`;
  await hearth.auth.signUp(email, "correct horse battery staple");
  const { secret } = await hearth.auth.enrollTotp();
  const codes = await hearth.auth.confirmTotp(totp(secret));
  assert.ok(codes.length >= 8);
  await hearth.auth.signOut();
  const first = await hearth.auth.signIn(email, "correct horse battery staple");
  assert.ok(first.mfaRequired, "the password alone is not enough");
  assert.equal(hearth.auth.currentUser, null);
  const wrong = await hearth.auth.verifyMfa(first.ticket, "000000").catch((error: unknown) => error);
  assert.ok(wrong instanceof HearthError, String(wrong));
  const user = await hearth.auth.verifyMfa(first.ticket, codes[0]);
  assert.equal(user.email, email);
  assert.equal((await hearth.auth.reloadUser()).mfa, true);
});

test("every listener and channel of a client shares one WebSocket", async () => {
  let sockets = 0;
  const Counted = class extends WebSocket {
    constructor(url: string) {
      super(url);
      sockets++;
    }
  };
  const hearth = createClient(server.url, { persistence: memoryStorage(), WebSocket: Counted as unknown as WebSocketLike });
  opened.push(hearth);
  await hearth.auth.signUp(`one-${Date.now()}@example.com`, "correct horse battery staple");
  const seen: number[] = [];
  for (let i = 0; i < 5; i++) onSnapshot(hearth.collection(`rooms/one-${i}/messages`), () => seen.push(i));
  channel(hearth, `room:one-${Date.now()}`).join({});
  await eventually(() => seen.length === 5, "five first snapshots");
  assert.equal(sockets, 1);
});

test("an anonymous user becomes a password user with the same id", async () => {
  const hearth = client();
  const guest = await hearth.auth.signInAnonymously();
  assert.ok(guest.anonymous);
  await hearth.doc(`counters/anon-${guest.id}`).set({ n: 1 });
  const email = `linked-${Date.now()}@example.com`;
  const linked = await hearth.auth.link(email, "correct horse battery staple");
  assert.equal(linked.id, guest.id);
  assert.equal(linked.anonymous, false);
  assert.equal(hearth.auth.currentUser?.email, email);
  await hearth.auth.signOut();
  const again = await hearth.auth.signIn(email, "correct horse battery staple");
  assert.ok(!again.mfaRequired && again.user.id === guest.id);
});
