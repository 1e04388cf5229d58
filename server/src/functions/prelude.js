// Run once per runtime: the console, and the host API behind `ctx.db`.
(() => {
  const host = globalThis.__hearth_host;
  delete globalThis.__hearth_host;
  const log = (level) => (...args) =>
    host("log", level, args.map((arg) => (typeof arg === "string" ? arg : JSON.stringify(arg))).join(" "));
  globalThis.console = { log: log("info"), info: log("info"), warn: log("warn"), error: log("error"), debug: log("debug") };
  const call = (op, ...args) => {
    const answer = JSON.parse(host(op, ...args.map((arg) => JSON.stringify(arg === undefined ? null : arg))));
    if (answer.error) {
      const error = new Error(answer.error.message);
      error.name = "HearthError";
      error.code = answer.error.code;
      throw error;
    }
    return answer.ok;
  };
  globalThis.__hearth_fetch = async (url, init = {}) => {
    const answer = call("fetch", String(url), {
      method: init.method || "GET",
      headers: init.headers || {},
      body: init.body === undefined || init.body === null ? null : String(init.body),
    });
    return Object.freeze({
      ok: answer.status >= 200 && answer.status < 300,
      status: answer.status,
      headers: answer.headers,
      text: async () => answer.body,
      json: async () => JSON.parse(answer.body),
    });
  };
  globalThis.__hearth_db = Object.freeze({
    get: async (path) => call("get", path),
    set: async (path, data) => call("set", path, data),
    create: async (path, data) => call("create", path, data),
    update: async (path, data) => call("update", path, data),
    delete: async (path) => call("delete", path),
    query: async (query) => call("query", query),
    batch: async (writes) => call("batch", writes),
  });
})();
