// Functions for the chat example: a profile for each new user, a word filter on every
// message, and a message counter on each room. Deploy with the project (`functions/`)
// or `PUT /v1/admin/functions/chat.js`.
import { beforeDocumentWrite, onDocumentWritten, onUserCreated, HearthError } from "hearth";

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
