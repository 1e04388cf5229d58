/** The error codes of the Hearth wire contract, plus `unavailable` for a server that cannot be reached. */
export type ErrorCode =
  | "invalid-argument"
  | "unauthenticated"
  | "permission-denied"
  | "not-found"
  | "already-exists"
  | "failed-precondition"
  | "payload-too-large"
  | "resource-exhausted"
  | "deadline-exceeded"
  | "internal"
  | "unavailable";

/** Every failure of the client: the server's error answer, or `unavailable` when it could not be reached. */
export class HearthError extends Error {
  override readonly name = "HearthError";

  constructor(
    readonly code: ErrorCode,
    message: string,
    /** The HTTP status (0 when no answer came). */
    readonly status = 0,
    readonly details: Record<string, unknown> = {},
    /** The server's `x-request-id`, to find the request in its log. */
    readonly requestId?: string,
  ) {
    super(message);
  }
}
