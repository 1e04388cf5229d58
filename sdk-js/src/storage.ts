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
  const database = () =>
    (opened ??= new Promise<IDBDatabase>((resolve, reject) => {
      const request = indexedDB.open(name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore("kv");
      request.onsuccess = () => {
        const db = request.result;
        // Another tab upgrading later must not be blocked by this one.
        db.onversionchange = () => {
          db.close();
          opened = undefined;
        };
        resolve(db);
      };
      request.onerror = () => {
        opened = undefined;
        reject(request.error);
      };
    }));
  const run = async <T>(mode: IDBTransactionMode, work: (store: IDBObjectStore) => IDBRequest<T>) => {
    const db = await database();
    return new Promise<T>((resolve, reject) => {
      const transaction = db.transaction("kv", mode);
      const request = work(transaction.objectStore("kv"));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = transaction.onabort = () => reject(transaction.error);
    });
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
