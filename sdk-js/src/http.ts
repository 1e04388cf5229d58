import { HearthError, type ErrorCode } from "./errors.js";

export interface RequestOptions {
  /** A JSON body. */
  body?: unknown;
  /** A raw text body (rules, function sources). */
  text?: string;
  headers?: Record<string, string>;
  /** Send the caller's credential (default true). */
  auth?: boolean;
}

/** What gives requests their credential: `force` asks for a new one after a 401. */
export type Credential = (force: boolean) => Promise<string | null>;

/** JSON over `fetch`, with the contract's error shape turned into {@link HearthError}. */
export class Http {
  credential: Credential = async () => null;

  constructor(
    readonly baseUrl: string,
    private readonly fetcher: typeof fetch,
    /** A request with no answer after this long fails as `unavailable` (so the offline cache takes over). */
    private readonly timeoutMs = 30_000,
  ) {}

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const token = options.auth === false ? null : await this.credential(attempt > 0);
      const headers: Record<string, string> = { ...options.headers };
      let body: string | undefined;
      if (options.body !== undefined) {
        headers["content-type"] = "application/json";
        body = JSON.stringify(options.body);
      } else if (options.text !== undefined) {
        headers["content-type"] = "text/plain; charset=utf-8";
        body = options.text;
      }
      if (token) headers.authorization = `Bearer ${token}`;
      let response: Response;
      try {
        response = await this.fetcher(this.baseUrl + path, { method, headers, body, signal: AbortSignal.timeout?.(this.timeoutMs) });
      } catch (error) {
        const why = error instanceof Error && error.name === "TimeoutError" ? `no answer in ${this.timeoutMs} ms` : String(error);
        throw new HearthError("unavailable", `cannot reach ${this.baseUrl}: ${why}`);
      }
      // An access token that expired in flight: once more with a fresh one.
      if (response.status === 401 && token && !token.startsWith("hk_") && attempt === 0) continue;
      if (!response.ok) throw await errorOf(response);
      const text = await response.text();
      return (text ? JSON.parse(text) : undefined) as T;
    }
  }
}

async function errorOf(response: Response): Promise<HearthError> {
  const requestId = response.headers.get("x-request-id") ?? undefined;
  let error: { code?: ErrorCode; message?: string; details?: Record<string, unknown> } = {};
  try {
    error = ((await response.json()) as { error?: typeof error }).error ?? {};
  } catch {
    // not the contract's shape (a proxy's page): the status says what it can
  }
  const code = error.code ?? (response.status >= 500 ? "unavailable" : "internal");
  return new HearthError(code, error.message ?? `HTTP ${response.status}`, response.status, error.details ?? {}, requestId);
}
