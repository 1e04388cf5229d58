// Access tokens that live 5 s: the client refreshes them before they expire, requests
// and live listeners carry on past the first token's life.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import WebSocket from "ws";

import { createClient, memoryStorage, onSnapshot, type Snapshot, type WebSocketLike } from "../../src/index.js";
import { KEY, Server, eventually } from "../harness.js";

let server: Server;
before(async () => {
  server = await Server.start({
    config: "[auth]\naccess_token_seconds = 5\n",
    rules: `["notes/{id}"]\nread = "auth != null"\n`,
  });
});
after(async () => server.close());

test("tokens are refreshed before they expire, for requests and for the live connection", async () => {
  const hearth = createClient(server.url, { persistence: memoryStorage(), WebSocket: WebSocket as unknown as WebSocketLike });
  const admin = createClient(server.url, { serviceKey: KEY });
  await hearth.auth.signUp(`short-${Date.now()}@example.com`, "correct horse battery staple");
  const first = await hearth.auth.getToken();
  const snapshots: Snapshot[] = [];
  onSnapshot(hearth.collection("notes"), (snapshot) => snapshots.push(snapshot));
  await eventually(() => snapshots.length === 1, "the first snapshot");
  let refreshed = 0;
  hearth.auth.onTokenChanged(() => refreshed++);
  await new Promise((resolve) => setTimeout(resolve, 7_000)); // past the first token's expiry
  assert.ok(refreshed >= 1, "the timer refreshed with nothing asking");
  const now = await hearth.auth.getToken();
  assert.ok(now && now !== first, "a new token");
  assert.equal((await hearth.auth.reloadUser()).id, hearth.auth.currentUser!.id, "requests still pass");
  await admin.doc("notes/n1").set({ text: "after the first token expired" });
  await eventually(() => snapshots.at(-1)!.docs.length === 1, "the change, delivered on the re-authenticated socket");
  hearth.close();
  admin.close();
});
