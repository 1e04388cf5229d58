// Writes applied locally as the server applies them (wire contract: RFC 7396 merge, the
// four transforms, preconditions), so a write made offline shows at once as it will be.
import type { BatchWrite } from "./docs.js";
import { HearthError } from "./errors.js";
import type { Doc, DocumentData } from "./types.js";
import { equal } from "./value.js";

type Json = unknown;
type Obj = Record<string, Json>;

const isObject = (value: Json): value is Obj => value !== null && typeof value === "object" && !Array.isArray(value);
const invalid = (message: string) => new HearthError("invalid-argument", message, 400);

function transformOf(value: Json): [string, Json] | undefined {
  if (!isObject(value)) return undefined;
  const key = Object.keys(value).find((name) => name.startsWith("$"));
  if (key === undefined) return undefined;
  if (Object.keys(value).length !== 1) throw invalid(`a transform object holds only its \`${key}\` key`);
  return [key, value[key]];
}

function resolve(key: string, [name, argument]: [string, Json], before: Json, now: string): Json {
  const array = () => {
    if (before === undefined || before === null) return [];
    if (!Array.isArray(before)) throw invalid(`array transform on \`${key}\`, which is not an array`);
    return [...before];
  };
  switch (name) {
    case "$increment":
      if (typeof argument !== "number") throw invalid("`$increment` takes a number");
      if (before === undefined || before === null) return argument;
      if (typeof before !== "number") throw invalid(`\`$increment\` on \`${key}\`, which is not a number`);
      return before + argument;
    case "$server_time":
      if (argument !== true) throw invalid("`$server_time` takes `true`");
      return now;
    case "$array_union":
    case "$array_remove": {
      if (!Array.isArray(argument)) throw invalid(`\`${name}\` takes an array`);
      const items = array();
      if (name === "$array_remove") return items.filter((present) => !argument.some((item) => equal(present, item)));
      for (const item of argument) if (!items.some((present) => equal(present, item))) items.push(item);
      return items;
    }
    default:
      throw invalid(`unknown transform \`${name}\``);
  }
}

/** RFC 7396 merge of `patch` into `target` (null removes), transforms resolved against `target`. */
export function merge(target: Obj, patch: Obj, now: string): Obj {
  const removed = new Set(Object.keys(patch).filter((key) => patch[key] === null));
  const out: Obj = Object.fromEntries(Object.entries(target).filter(([key]) => !removed.has(key)));
  for (const [key, value] of Object.entries(patch)) {
    const transform = transformOf(value);
    if (value === null) continue;
    else if (transform) out[key] = resolve(key, transform, out[key], now);
    else if (isObject(value)) out[key] = merge(isObject(out[key]) ? (out[key] as Obj) : {}, value, now);
    else out[key] = value;
  }
  return out;
}

/** The data of a create or set: as given, transforms resolved against the replaced document's fields. */
export function materialize(data: Obj, current: Obj | undefined, now: string): Obj {
  const out: Obj = {};
  for (const [key, value] of Object.entries(data)) {
    const before = current?.[key];
    const transform = transformOf(value);
    if (transform) out[key] = resolve(key, transform, before, now);
    else if (isObject(value)) out[key] = materialize(value, isObject(before) ? before : undefined, now);
    else out[key] = value;
  }
  return out;
}

/** The server's time format: RFC 3339 UTC with microseconds. */
export function timestamp(date = new Date()): string {
  return date.toISOString().replace("Z", "000Z");
}

/** The document after `write` (null: deleted), or the error the server would answer. */
export function applyWrite(current: Doc | null, write: BatchWrite, now = timestamp()): Doc | null {
  if (write.if_version !== undefined && (current?.version ?? 0) !== write.if_version) {
    throw new HearthError("failed-precondition", `\`${write.path}\` is not at version ${write.if_version}`, 412);
  }
  if (write.op === "delete") return null;
  if (write.op === "create" && current) throw new HearthError("already-exists", `\`${write.path}\` exists`, 409);
  if (write.op === "update" && !current) throw new HearthError("not-found", `no document \`${write.path}\``, 404);
  if (!isObject(write.data)) throw invalid("document data must be a JSON object");
  const data = (write.op === "update" ? merge(current!.data as Obj, write.data, now) : materialize(write.data, current?.data as Obj | undefined, now)) as DocumentData;
  return {
    path: write.path,
    id: write.path.slice(write.path.lastIndexOf("/") + 1),
    data,
    version: (current?.version ?? 0) + 1,
    created_at: current?.created_at ?? now,
    updated_at: now,
  };
}

const ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/** An id as the server makes them: 20 alphanumerics, the first 8 a base-62 millisecond time, so ids sort by creation. */
export function newId(): string {
  let time = Date.now();
  let id = "";
  for (let i = 0; i < 8; i++, time = Math.floor(time / 62)) id = ALPHABET[time % 62] + id;
  const random = crypto.getRandomValues(new Uint8Array(12));
  for (const byte of random) id += ALPHABET[byte % 62];
  return id;
}
