// The offline cache in Node (in memory: Node has no IndexedDB) against the real server,
// stopped and started again to be unreachable.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import WebSocket from "ws";

import { HearthError, createClient, enableOffline, increment, memoryStorage, onSnapshot, type Snapshot, type WebSocketLike } from "../../src/index.js";
import { KEY, Server, eventually } from "../harness.js";

const RULES = `
["todos/{todo}"]
read = "auth != null && resource.data.owner == auth.uid"
create = "auth != null && request.data.owner == auth.uid && size(request.data.title) <= 20"
update = "auth != null && resource.data.owner == auth.uid && request.data.owner == auth.uid"
delete = "auth != null && resource.data.owner == auth.uid"
`;

let server: Server;
before(async () => (server = await Server.start({ rules: RULES })));
after(async () => server.close());

/** A client whose requests are counted by route. */
async function offlineClient() {
  const requests: string[] = [];
  const counted: typeof fetch = (input, init) => {
    requests.push(`${init?.method ?? "GET"} ${new URL(String(input)).pathname}`);
    return fetch(input, init);
  };
  const hearth = createClient(server.url, { persistence: memoryStorage(), WebSocket: WebSocket as unknown as WebSocketLike, fetch: counted });
  const offline = enableOffline(hearth);
  await hearth.auth.signUp(`o-${Math.random().toString(36).slice(2)}@example.com`, "correct horse battery staple");
  return { hearth, offline, requests };
}

test("offline, reads answer from the cache and writes show at once, then go in one batch, in order, once", async () => {
  const { hearth, offline, requests } = await offlineClient();
  const uid = hearth.auth.currentUser!.id;
  const todos = hearth.collection("todos");
  await todos.doc("t1").set({ owner: uid, title: "seen online", n: 0 });
  const mine = todos.where("owner", "==", uid).orderBy("title");
  const snapshots: Snapshot[] = [];
  const stop = onSnapshot(mine, (snapshot) => snapshots.push(snapshot));
  await eventually(() => snapshots.at(-1)?.fromCache === false, "the server's snapshot");

  await server.stop();
  assert.equal((await todos.doc("t1").get())!.data.title, "seen online", "a read answers from the cache");
  const added = await todos.add({ owner: uid, title: "b offline", n: 1 });
  await todos.doc("t1").update({ n: increment(5) });
  await todos.doc("t3").set({ owner: uid, title: "c offline", n: 3 });
  await todos.doc("t3").delete();
  await todos.doc("t4").set({ owner: uid, title: "d offline", n: 4 });
  assert.equal(offline.pendingWrites, 5);
  assert.equal(added.version, 1);
  const shown = snapshots.at(-1)!;
  assert.ok(shown.hasPendingWrites);
  assert.deepEqual(shown.docs.map((doc) => doc.data.title), ["b offline", "d offline", "seen online"]);
  assert.equal(shown.docs.find((doc) => doc.id === "t1")!.data.n, 5, "the increment shows at once");
  const page = await mine.get();
  assert.deepEqual(page.docs.map((doc) => doc.id), [added.id, "t4", "t1"], "a query answers from the cache");

  requests.length = 0;
  await server.run();
  offline.poke();
  await offline.waitForPendingWrites();
  assert.deepEqual(requests.filter((request) => !request.endsWith("/v1/auth/refresh")), ["POST /v1/batch"], "one request for five writes");
  const admin = createClient(server.url, { serviceKey: KEY });
  const stored = await admin.collection("todos").where("owner", "==", uid).orderBy("title").get();
  assert.deepEqual(stored.docs.map((doc) => [doc.id, doc.data.n, doc.version]), [[added.id, 1, 1], ["t4", 4, 1], ["t1", 5, 2]]);
  assert.equal(await admin.doc("todos/t3").get(), null);
  await eventually(() => snapshots.at(-1)!.hasPendingWrites === false && snapshots.at(-1)!.fromCache === false, "the listener back on the server");
  assert.deepEqual(snapshots.at(-1)!.docs.map((doc) => doc.data.n), [1, 4, 5]);
  stop();
  admin.close();
  hearth.close();
});

test("a queued write the rules refuse is rolled back and reported; the others go", async () => {
  const { hearth, offline } = await offlineClient();
  const uid = hearth.auth.currentUser!.id;
  const rejected: HearthError[] = [];
  offline.onWriteRejected(({ error }) => rejected.push(error));
  const snapshots: Snapshot[] = [];
  onSnapshot(hearth.collection("todos").where("owner", "==", uid), (snapshot) => snapshots.push(snapshot));
  await eventually(() => snapshots.at(-1)?.fromCache === false, "the server's snapshot");
  await server.stop();
  await hearth.doc("todos/ok1").set({ owner: uid, title: "fine" });
  await hearth.doc("todos/bad").set({ owner: uid, title: "a title far too long for the rules" });
  await hearth.doc("todos/ok2").set({ owner: uid, title: "fine too" });
  assert.equal(snapshots.at(-1)!.docs.length, 3, "all three show while offline");
  await server.run();
  offline.poke();
  await offline.waitForPendingWrites();
  assert.deepEqual(rejected.map((error) => error.code), ["permission-denied"]);
  await eventually(() => snapshots.at(-1)!.docs.length === 2 && !snapshots.at(-1)!.hasPendingWrites, "the refused one gone");
  assert.deepEqual(snapshots.at(-1)!.docs.map((doc) => doc.id).sort(), ["ok1", "ok2"]);
  hearth.close();
});
