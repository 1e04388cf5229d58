export { createClient, Hearth, type ClientOptions } from "./client.js";
export { Auth, type MfaRequired, type SignInResult, type TotpEnrollment } from "./auth.js";
export {
  CollectionRef,
  DocumentRef,
  Query,
  Transaction,
  WriteBatch,
  arrayRemove,
  arrayUnion,
  increment,
  serverTime,
  type AggregateResult,
  type BatchWrite,
  type Page,
  type WriteOptions,
} from "./docs.js";
export { HearthError, type ErrorCode } from "./errors.js";
export { Channel, channel, onSnapshot, type DocChange, type Member, type Snapshot, type Unsubscribe, type WebSocketLike } from "./realtime.js";
export { asyncStorage, indexedDBStorage, memoryStorage, webStorage, type KeyValueStore } from "./storage.js";
export type { Doc, DocumentData, Filter, Op, Order, QuerySpec, Session, User } from "./types.js";
export { compare, queryMatches, queryOrder } from "./value.js";
export { Offline, enableOffline, type RejectedWrite } from "./offline.js";
