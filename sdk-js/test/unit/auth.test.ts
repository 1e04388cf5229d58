import assert from "node:assert/strict";
import { after, test } from "node:test";

import { HearthError, createClient, memoryStorage, type User } from "../../src/index.js";

/** A server that rotates refresh tokens and, as Hearth does, revokes the family when a rotated-out one comes back. */
function fakeServer() {
  const user: User = {
    id: "u1",
    email: "ada@example.com",
    email_verified: false,
    anonymous: false,
    disabled: false,
    claims: {},
    data: {},
    mfa: false,
    created_at: "",
    providers: ["password"],
  };
  const state = { live: "r0", generation: 0, refreshes: 0, reused: false };
  const session = () => ({ access_token: `a${state.generation}`, refresh_token: state.live, token_type: "Bearer", expires_in: 900, user });
  const answer = (status: number, body: unknown) =>
    new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
  const fetcher = async (url: string | URL | Request, init?: RequestInit) => {
    const path = new URL(String(url)).pathname;
    const body = init?.body ? JSON.parse(String(init.body)) : {};
    await new Promise((resolve) => setTimeout(resolve, 5));
    if (path === "/v1/auth/login") return answer(200, session());
    if (path === "/v1/auth/refresh") {
      state.refreshes++;
      if (state.reused || body.refresh_token !== state.live) {
        state.reused = true;
        return answer(401, { error: { code: "unauthenticated", message: "refresh token reused", details: {} } });
      }
      state.generation++;
      state.live = `r${state.generation}`;
      return answer(200, session());
    }
    if (path === "/v1/auth/logout") return new Response(null, { status: 204 });
    return answer(404, { error: { code: "not-found", message: path, details: {} } });
  };
  return { state, fetcher: fetcher as typeof fetch };
}

test("clients sharing one store never present a rotated-out refresh token", async () => {
  const server = fakeServer();
  const store = memoryStorage();
  const one = createClient("http://hearth.test", { persistence: store, fetch: server.fetcher });
  const two = createClient("http://hearth.test", { persistence: store, fetch: server.fetcher });
  after(() => (one.close(), two.close()));
  await two.auth.ready;
  await one.auth.signIn("ada@example.com", "pw");
  // `two` loaded before the sign-in: the other tab's message tells it.
  for (let wait = 0; !two.auth.currentUser && wait < 100; wait++) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.equal(two.auth.currentUser?.id, "u1");
  for (let round = 0; round < 20; round++) {
    const [a, b] = await Promise.all([one.auth.getToken(true), two.auth.getToken(true)]);
    assert.ok(a && b, `round ${round}: both still signed in`);
  }
  assert.equal(server.state.reused, false, "no token was reused");
  assert.ok(server.state.refreshes >= 20 && server.state.refreshes <= 40);
  assert.equal(await one.auth.getToken(), await two.auth.getToken());
});

test("a refresh the server refuses signs out, and listeners hear it", async () => {
  const server = fakeServer();
  const client = createClient("http://hearth.test", { persistence: memoryStorage(), fetch: server.fetcher });
  after(() => client.close());
  const seen: (string | null)[] = [];
  client.auth.onAuthStateChanged((user) => seen.push(user?.id ?? null));
  await client.auth.signIn("ada@example.com", "pw");
  server.state.reused = true; // the family was revoked (a sign-out elsewhere, a disabled user)
  assert.equal(await client.auth.getToken(true), null);
  assert.equal(client.auth.currentUser, null);
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(seen, [null, "u1", null]);
});

test("a request with no answer in time fails as unavailable", async () => {
  const hanging = ((_url: string, init?: RequestInit) =>
    new Promise((_resolve, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal!.reason)))) as typeof fetch;
  const client = createClient("http://hearth.test", { persistence: memoryStorage(), fetch: hanging, timeoutMs: 50 });
  after(() => client.close());
  // Node does not wait for AbortSignal.timeout's timer alone; this keeps the test alive.
  const alive = setTimeout(() => undefined, 5_000);
  const error = await client.doc("rooms/r1").get().catch((failure: unknown) => failure);
  clearTimeout(alive);
  assert.ok(error instanceof HearthError && error.code === "unavailable" && /no answer in 50 ms/.test(error.message), String(error));
});
