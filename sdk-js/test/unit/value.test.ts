import assert from "node:assert/strict";
import { test } from "node:test";

import { canonical, compare, opMatches, queryMatches, queryOrder } from "../../src/value.js";
import type { Doc } from "../../src/types.js";

const doc = (path: string, data: Record<string, unknown>): Doc => ({
  path,
  id: path.split("/").pop()!,
  data,
  version: 1,
  created_at: "",
  updated_at: "",
});

test("values sort by type, then within their type, as the server sorts them", () => {
  const sorted = [{ a: 1 }, [2], "b", 10, 2.5, true, false, null, "a", [1, 2]].sort(compare);
  assert.deepEqual(sorted, [null, false, true, 2.5, 10, "a", "b", [1, 2], [2], { a: 1 }]);
});

test("strings compare by code point, the order of their UTF-8 bytes", () => {
  // UTF-16 puts the emoji (a surrogate pair from 0xD83D) before U+FFFF; UTF-8 after it.
  assert.equal(compare("\uffff", "😀"), -1);
  assert.equal(compare("😀", "😀a"), -1);
  assert.equal(compare("é", "z"), 1);
});

test("objects compare by canonical JSON with sorted keys", () => {
  assert.equal(canonical({ b: 1, a: [1, { d: 2, c: 3 }] }), '{"a":[1,{"c":3,"d":2}],"b":1}');
  assert.equal(compare({ b: 1, a: 2 }, { a: 2, b: 1 }), 0);
});

test("filters mean what they mean on the server", () => {
  assert.ok(opMatches({ field: "n", op: "<", value: 5 }, 3));
  assert.ok(!opMatches({ field: "n", op: "<", value: 5 }, "3"), "< matches only the same type");
  assert.ok(opMatches({ field: "n", op: "!=", value: 5 }, "5"), "!= matches other types");
  assert.ok(!opMatches({ field: "n", op: "!=", value: 5 }, undefined), "a missing field never matches");
  assert.ok(opMatches({ field: "n", op: "in", value: [1, 2] }, 2));
  assert.ok(opMatches({ field: "t", op: "array-contains-any", value: ["x", "y"] }, ["y"]));
  assert.ok(opMatches({ field: "o", op: "==", value: { a: 1, b: 2 } }, { b: 2, a: 1 }));
});

test("a query's order is its order_by, then the path; documents lacking an order field are not in it", () => {
  const query = { collection: "scores", order_by: [{ field: "n", dir: "desc" as const }] };
  const docs = [doc("scores/b", { n: 1 }), doc("scores/a", { n: 1 }), doc("scores/c", { n: 7 })];
  assert.deepEqual(docs.sort(queryOrder(query)).map((d) => d.id), ["c", "a", "b"]);
  assert.ok(!queryMatches(query, doc("scores/d", {})));
  assert.ok(!queryMatches(query, doc("other/d", { n: 1 })));
  assert.ok(queryMatches({ collection_group: "messages" }, doc("rooms/r1/messages/m1", {})));
  assert.ok(!queryMatches({ collection: "rooms" }, doc("rooms/r1/messages/m1", {})));
});
