import assert from "node:assert/strict";
import { test } from "node:test";

import { HearthError } from "../../src/errors.js";
import { applyWrite, merge, newId, timestamp } from "../../src/eval.js";
import type { Doc } from "../../src/types.js";

const NOW = "2026-12-08T10:00:00.000000Z";
const doc = (data: Record<string, unknown>, version = 1): Doc => ({ path: "todos/t1", id: "t1", data, version, created_at: NOW, updated_at: NOW });

test("a patch merges as RFC 7396 says and transforms apply to what is there", () => {
  const merged = merge({ a: 1, nested: { keep: true, drop: 1 }, list: [1], n: 2 }, {
    a: null,
    nested: { drop: null, add: "x" },
    list: { $array_union: [1, 2] },
    n: { $increment: 3 },
    at: { $server_time: true },
    fresh: { $array_remove: [1] },
  }, NOW);
  assert.deepEqual(merged, { nested: { keep: true, add: "x" }, list: [1, 2], n: 5, at: NOW, fresh: [] });
  assert.throws(() => merge({ n: "a" }, { n: { $increment: 1 } }, NOW), /not a number/);
  assert.throws(() => merge({}, { n: { $nope: 1 } }, NOW), /unknown transform/);
  assert.throws(() => merge({}, { n: { $increment: 1, other: 2 } }, NOW), /only its/);
});

test("writes check what the server checks and advance the version", () => {
  assert.equal(applyWrite(doc({ n: 1 }), { op: "update", path: "todos/t1", data: { n: { $increment: 1 } } }, NOW)!.version, 2);
  assert.equal(applyWrite(null, { op: "set", path: "todos/t1", data: { n: 1 } }, NOW)!.version, 1);
  assert.equal(applyWrite(doc({}), { op: "delete", path: "todos/t1" }, NOW), null);
  const code = (work: () => unknown) => {
    try {
      work();
    } catch (error) {
      return (error as HearthError).code;
    }
  };
  assert.equal(code(() => applyWrite(doc({}), { op: "create", path: "todos/t1", data: {} }, NOW)), "already-exists");
  assert.equal(code(() => applyWrite(null, { op: "update", path: "todos/t1", data: {} }, NOW)), "not-found");
  assert.equal(code(() => applyWrite(doc({}, 3), { op: "set", path: "todos/t1", data: {}, if_version: 2 }, NOW)), "failed-precondition");
});

test("times have microseconds and ids sort by creation", async () => {
  assert.match(timestamp(new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678))), /^2026-01-02T03:04:05\.678000Z$/);
  const first = newId();
  await new Promise((resolve) => setTimeout(resolve, 3));
  const second = newId();
  assert.match(first, /^[0-9A-Za-z]{20}$/);
  assert.ok(first < second);
});
