// Functions for the chat example: a profile for each new user, open rooms to join, a
// word filter on every message, and a message counter on each room. Deployed with the
// project (`hearth serve --dir examples/chat`) or `PUT /v1/admin/functions/chat.js`.
import { beforeDocumentWrite, onCall, onDocumentWritten, onUserCreated, HearthError } from "hearth";

const BLOCKED = ["darn", "heck", "drat"];

// Every new user gets a public profile they can edit (`users/{uid}` in rules.toml).
export const welcome = onUserCreated(async (user, ctx) => {
  const name = user.email ? user.email.split("@")[0] : "guest";
  await ctx.db.set(`users/${user.id}`, { name, joined: { $server_time: true } });
});

// Runs before the rules on every message a client writes: masks blocked words, refuses
// an empty message. Returning the data replaces what is stored.
export const filterWords = beforeDocumentWrite("rooms/{room}/messages/{msg}", (event) => {
  if (!event.after) return; // deletes pass
  const text = String(event.after.data.text ?? "").trim();
  if (text === "") throw new HearthError("invalid-argument", "a message needs some text");
  const pattern = new RegExp(`\\b(${BLOCKED.join("|")})\\b`, "gi");
  return { ...event.after.data, text: text.replace(pattern, (word) => "*".repeat(word.length)) };
});

// After each new or deleted message: the room's count and its latest text. Triggers run
// at least once, so a count may be off after a crash; recount with a query if it must
// be exact.
export const countMessages = onDocumentWritten("rooms/{room}/messages/{msg}", async (event, ctx) => {
  const room = `rooms/${event.params.room}`;
  if (!(await ctx.db.get(room))) return;
  if (event.kind === "create") {
    await ctx.db.update(room, { message_count: { $increment: 1 }, last_message: event.after.data.text });
  } else if (event.kind === "delete") {
    await ctx.db.update(room, { message_count: { $increment: -1 } });
  }
});

// Open rooms: any signed-in user (not anonymous) may join one; the first one in creates
// it and owns it. Rules let only the owner change a room, so joining goes through here.
export const joinRoom = onCall(async (data, ctx) => {
  if (!ctx.auth || ctx.auth.anonymous) throw new HearthError("unauthenticated", "sign in to join a room");
  const room = String(data?.room ?? "");
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(room)) throw new HearthError("invalid-argument", "a room name is 1 to 64 letters, digits, _ or -");
  const existing = await ctx.db.get(`rooms/${room}`);
  if (!existing) {
    await ctx.db.create(`rooms/${room}`, { owner: ctx.auth.uid, members: [ctx.auth.uid] });
  } else if (!existing.data.members.includes(ctx.auth.uid)) {
    await ctx.db.update(`rooms/${room}`, { members: { $array_union: [ctx.auth.uid] } });
  }
  return { room };
});
