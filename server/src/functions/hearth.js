// The "hearth" module functions import their helpers from.

export class HearthError extends Error {
  constructor(code, message, details) {
    super(message);
    this.name = "HearthError";
    this.code = code;
    this.details = details;
  }
}

export function onCall(handler) {
  if (typeof handler !== "function") {
    throw new TypeError("onCall takes a function (data, ctx) => result");
  }
  return Object.freeze({ __hearth: "call", handler });
}

export function onDocumentWritten(pattern, handler) {
  if (typeof pattern !== "string" || typeof handler !== "function") {
    throw new TypeError("onDocumentWritten takes a document pattern and a function (event, ctx) => {}");
  }
  return Object.freeze({ __hearth: "document-written", pattern, handler });
}

export function beforeDocumentWrite(pattern, handler) {
  if (typeof pattern !== "string" || typeof handler !== "function") {
    throw new TypeError("beforeDocumentWrite takes a document pattern and a function (event, ctx) => data");
  }
  return Object.freeze({ __hearth: "before-document-write", pattern, handler });
}

export function onUserCreated(handler) {
  if (typeof handler !== "function") {
    throw new TypeError("onUserCreated takes a function (user, ctx) => {}");
  }
  return Object.freeze({ __hearth: "user-created", handler });
}

export function schedule(cron, handler) {
  if (typeof cron !== "string" || typeof handler !== "function") {
    throw new TypeError("schedule takes a cron expression and a function (ctx, tick) => {}");
  }
  return Object.freeze({ __hearth: "schedule", cron, handler: (tick, ctx) => handler(ctx, tick) });
}
