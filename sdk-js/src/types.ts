/** Document data: a JSON object. */
export type DocumentData = Record<string, unknown>;

/** A document as the server returns it everywhere. */
export interface Doc<T = DocumentData> {
  path: string;
  id: string;
  data: T;
  version: number;
  created_at: string;
  updated_at: string;
}

export type Op = "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not-in" | "array-contains" | "array-contains-any";

export interface Filter {
  field: string;
  op: Op;
  value: unknown;
}

export interface Order {
  field: string;
  dir: "asc" | "desc";
}

/** A query as `POST /v1/query` takes it. */
export interface QuerySpec {
  collection?: string;
  collection_group?: string;
  where?: Filter[];
  order_by?: Order[];
  limit?: number;
  cursor?: string;
}

/** A user as the auth routes return it. */
export interface User {
  id: string;
  email: string | null;
  email_verified: boolean;
  anonymous: boolean;
  disabled: boolean;
  claims: Record<string, unknown>;
  data: Record<string, unknown>;
  mfa: boolean;
  created_at: string;
  providers: string[];
}

/** A signed-in session, as kept by the client. */
export interface Session {
  access_token: string;
  refresh_token: string;
  /** Milliseconds since the epoch when the access token expires. */
  expires_at: number;
  user: User;
}
