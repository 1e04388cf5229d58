// The order and the meaning of filters as the server has them (wire contract, "Queries"),
// so live queries keep the server's order and the offline cache answers as the server would.
import type { Doc, Filter, QuerySpec } from "./types.js";

type Json = unknown;

function rank(value: Json): number {
  if (value === null || value === undefined) return 0;
  if (value === false) return 1;
  if (value === true) return 2;
  if (typeof value === "number" || typeof value === "bigint") return 3;
  if (typeof value === "string") return 4;
  if (Array.isArray(value)) return 5;
  return 6;
}

/** Strings by code point, which is the order of their UTF-8 bytes (the server's order). */
export function compareStrings(a: string, b: string): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    const x = a.codePointAt(i)!;
    const y = b.codePointAt(i)!;
    if (x !== y) return x < y ? -1 : 1;
    if (x > 0xffff) i++;
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

/** Minified JSON with object keys sorted, as the server orders arrays and objects. */
export function canonical(value: Json): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, Json>).sort(([a], [b]) => compareStrings(a, b));
    return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${canonical(item)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

/** The total order of JSON values: null < false < true < numbers < strings < arrays < objects. */
export function compare(a: Json, b: Json): number {
  const byRank = rank(a) - rank(b);
  if (byRank !== 0) return Math.sign(byRank);
  switch (rank(a)) {
    case 3:
      return a! < b! ? -1 : a! > b! ? 1 : 0;
    case 4:
      return compareStrings(a as string, b as string);
    case 5:
    case 6:
      return compareStrings(canonical(a), canonical(b));
    default:
      return 0;
  }
}

export const equal = (a: Json, b: Json): boolean => compare(a, b) === 0;

/** The value at a dotted field path (`__id__` is the document id), or `undefined` when absent. */
export function fieldValue(doc: Doc, field: string): Json {
  if (field === "__id__") return doc.id;
  let current: Json = doc.data;
  for (const segment of field.split(".")) {
    if (current === null || typeof current !== "object" || Array.isArray(current)) return undefined;
    if (!Object.prototype.hasOwnProperty.call(current, segment)) return undefined;
    current = (current as Record<string, Json>)[segment];
  }
  return current;
}

/** Whether a field's value (`undefined`: absent) meets a filter. */
export function opMatches(filter: Filter, value: Json): boolean {
  if (value === undefined) return false;
  const wanted = filter.value;
  const list = Array.isArray(wanted) ? wanted : [];
  const sameType = rank(value) === rank(wanted);
  switch (filter.op) {
    case "==":
      return equal(value, wanted);
    case "!=":
      return !equal(value, wanted);
    case "<":
      return sameType && compare(value, wanted) < 0;
    case "<=":
      return sameType && compare(value, wanted) <= 0;
    case ">":
      return sameType && compare(value, wanted) > 0;
    case ">=":
      return sameType && compare(value, wanted) >= 0;
    case "in":
      return list.some((item) => equal(value, item));
    case "not-in":
      return !list.some((item) => equal(value, item));
    case "array-contains":
      return Array.isArray(value) && value.some((item) => equal(item, wanted));
    case "array-contains-any":
      return Array.isArray(value) && value.some((item) => list.some((candidate) => equal(item, candidate)));
  }
}

/** Whether the document at `path` is directly in `collection`, or in any collection named `group`. */
export function inTarget(query: QuerySpec, path: string): boolean {
  const parent = path.slice(0, path.lastIndexOf("/"));
  if (query.collection !== undefined) return parent === query.collection;
  if (query.collection_group !== undefined) return parent.split("/").pop() === query.collection_group;
  return false;
}

/** Whether `doc` is in the result of `query`, ignoring its limit and cursor. */
export function queryMatches(query: QuerySpec, doc: Doc): boolean {
  return (
    inTarget(query, doc.path) &&
    (query.order_by ?? []).every((order) => fieldValue(doc, order.field) !== undefined) &&
    (query.where ?? []).every((filter) => opMatches(filter, fieldValue(doc, filter.field)))
  );
}

/** The order of a query's results: its `order_by`, then the path ascending. */
export function queryOrder(query: QuerySpec): (a: Doc, b: Doc) => number {
  const orders = query.order_by ?? [];
  return (a, b) => {
    for (const order of orders) {
      const ordering = compare(fieldValue(a, order.field) ?? null, fieldValue(b, order.field) ?? null);
      if (ordering !== 0) return order.dir === "desc" ? -ordering : ordering;
    }
    return compareStrings(a.path, b.path);
  };
}
