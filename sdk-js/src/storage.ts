import { committed, openDatabase, request } from "./idb.js";

/** Where the client keeps its session (and, with the offline cache, documents): async, so
 * IndexedDB and React Native's AsyncStorage fit. Every tab of an origin shares one. */
export interface KeyValueStore {
  get(key: string): Promise<string | null>;
  set(key: string, value: string): Promise<void>;
  remove(key: string): Promise<void>;
}

/** Kept in this page's memory only: gone on reload, not shared with other tabs. */
export function memoryStorage(): KeyValueStore {
  const values = new Map<string, string>();
  return {
    get: async (key) => values.get(key) ?? null,
    set: async (key, value) => void values.set(key, value),
    remove: async (key) => void values.delete(key),
  };
}

/** `localStorage` (or another Web Storage). */
export function webStorage(storage: Storage = globalThis.localStorage): KeyValueStore {
  return {
    get: async (key) => storage.getItem(key),
    set: async (key, value) => storage.setItem(key, value),
    remove: async (key) => storage.removeItem(key),
  };
}

/** An AsyncStorage-like store (React Native's `@react-native-async-storage/async-storage`). */
export function asyncStorage(store: {
  getItem(key: string): Promise<string | null>;
  setItem(key: string, value: string): Promise<void>;
  removeItem(key: string): Promise<void>;
}): KeyValueStore {
  return {
    get: (key) => store.getItem(key),
    set: (key, value) => store.setItem(key, value),
    remove: (key) => store.removeItem(key),
  };
}

/** IndexedDB, one object store of strings: the browser default. Several tabs may hold it
 * open at once; nothing is leased. */
export function indexedDBStorage(name = "hearth"): KeyValueStore {
  let opened: Promise<IDBDatabase> | undefined;
  const database = () => {
    opened ??= openDatabase(name, (db) => db.createObjectStore("kv"), () => (opened = undefined));
    opened.catch(() => (opened = undefined));
    return opened;
  };
  const run = async <T>(mode: IDBTransactionMode, work: (store: IDBObjectStore) => IDBRequest<T>) => {
    const transaction = (await database()).transaction("kv", mode);
    const [result] = await Promise.all([request<T>(work(transaction.objectStore("kv"))), committed(transaction)]);
    return result;
  };
  return {
    get: async (key) => ((await run("readonly", (store) => store.get(key))) as string | undefined) ?? null,
    set: async (key, value) => void (await run("readwrite", (store) => store.put(value, key))),
    remove: async (key) => void (await run("readwrite", (store) => store.delete(key))),
  };
}

/** The default for where the client runs: IndexedDB in a browser, else memory. */
export function defaultStorage(): KeyValueStore {
  return typeof indexedDB === "undefined" ? memoryStorage() : indexedDBStorage();
}
