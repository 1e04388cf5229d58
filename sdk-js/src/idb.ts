// IndexedDB's callbacks as promises, for the session store and the offline cache.

/** Opens database `name` (version 1, made by `create`). It closes itself when another tab upgrades it, calling `closed`. */
export function openDatabase(name: string, create: (db: IDBDatabase) => void, closed: () => void = () => undefined): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const opening = indexedDB.open(name, 1);
    opening.onupgradeneeded = () => create(opening.result);
    opening.onsuccess = () => {
      const db = opening.result;
      db.onversionchange = () => {
        db.close();
        closed();
      };
      resolve(db);
    };
    opening.onerror = () => reject(opening.error);
  });
}

/** The result of one request. */
export function request<T>(request: IDBRequest): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result as T);
    request.onerror = () => reject(request.error);
  });
}

/** Settles when `transaction` commits (or fails when it aborts). */
export function committed(transaction: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve();
    transaction.onerror = transaction.onabort = () => reject(transaction.error);
  });
}
