import { HearthError } from "./errors.js";
import type { Http } from "./http.js";
import type { KeyValueStore } from "./storage.js";
import type { Session, User } from "./types.js";

/** The server's session answer. */
interface SessionAnswer {
  access_token: string;
  refresh_token: string;
  expires_in: number;
  user: User;
}

/** A sign-in that needs the second factor: pass the ticket and a code to {@link Auth.verifyMfa}. */
export interface MfaRequired {
  mfaRequired: true;
  ticket: string;
  expiresIn: number;
}

export type SignInResult = { mfaRequired: false; user: User } | MfaRequired;

export interface TotpEnrollment {
  secret: string;
  otpauth_uri: string;
}

type Listener = (user: User | null) => void;

/** Where Web Locks are missing (Node, React Native): one queue per session key, shared by the clients of this realm. */
const queues = new Map<string, Promise<unknown>>();

/** Refresh this long before the access token expires (or at three quarters of a short life). */
const REFRESH_MARGIN_MS = 60_000;

/**
 * Sign-in state, kept in a {@link KeyValueStore} shared by every tab of the origin.
 *
 * Tabs agree on one session: a refresh runs under a Web Lock (one tab at a time), reads
 * the stored session first and uses the newest refresh token, so no tab ever presents a
 * rotated-out token (which the server would take for theft and revoke the family). The
 * tab that refreshed or signed out tells the others on a BroadcastChannel, and they
 * read the store again.
 */
export class Auth {
  #session: Session | null = null;
  #listeners = new Set<Listener>();
  #tokenListeners = new Set<() => void>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #channel: BroadcastChannel | undefined;
  readonly #key: string;
  /** Settles once the stored session is loaded. */
  readonly ready: Promise<void>;

  constructor(
    private readonly http: Http,
    private readonly store: KeyValueStore,
  ) {
    this.#key = `hearth.session:${http.baseUrl}`;
    if (typeof BroadcastChannel !== "undefined") {
      this.#channel = new BroadcastChannel(this.#key);
      this.#channel.onmessage = () => void this.#reload();
      // In Node, the channel does not keep the process alive.
      (this.#channel as { unref?: () => void }).unref?.();
    }
    this.ready = this.#reload();
  }

  /** The signed-in user, or null. */
  get currentUser(): User | null {
    return this.#session?.user ?? null;
  }

  /** Calls `listener` with the current user now (once loaded) and at every sign-in, sign-out or change of user. */
  onAuthStateChanged(listener: Listener): () => void {
    this.#listeners.add(listener);
    void this.ready.then(() => this.#listeners.has(listener) && listener(this.currentUser));
    return () => this.#listeners.delete(listener);
  }

  /** @internal Called whenever the access token changes (refresh included). */
  onTokenChanged(listener: () => void): () => void {
    this.#tokenListeners.add(listener);
    return () => this.#tokenListeners.delete(listener);
  }

  /** A valid access token (refreshed first when about to expire), or null when signed out. */
  async getToken(forceRefresh = false): Promise<string | null> {
    await this.ready;
    const session = this.#session;
    if (!session) return null;
    if (!forceRefresh && session.expires_at - Date.now() > 5_000) return session.access_token;
    return (await this.#refresh(session))?.access_token ?? null;
  }

  async signUp(email: string, password: string): Promise<User> {
    return this.#start(await this.http.request<SessionAnswer>("POST", "/v1/auth/signup", { body: { email, password }, auth: false }));
  }

  async signIn(email: string, password: string): Promise<SignInResult> {
    const answer = await this.http.request<SessionAnswer | { mfa_required: true; ticket: string; expires_in: number }>(
      "POST",
      "/v1/auth/login",
      { body: { email, password }, auth: false },
    );
    if ("mfa_required" in answer) return { mfaRequired: true, ticket: answer.ticket, expiresIn: answer.expires_in };
    return { mfaRequired: false, user: await this.#start(answer) };
  }

  /** The second step of a sign-in: a TOTP code or an unused recovery code. */
  async verifyMfa(ticket: string, code: string): Promise<User> {
    return this.#start(await this.http.request<SessionAnswer>("POST", "/v1/auth/mfa/verify", { body: { ticket, code }, auth: false }));
  }

  async signInAnonymously(): Promise<User> {
    return this.#start(await this.http.request<SessionAnswer>("POST", "/v1/auth/anonymous", { auth: false }));
  }

  /** Turns the anonymous user into a password user with the same id. */
  async link(email: string, password: string): Promise<User> {
    return this.#start(await this.http.request<SessionAnswer>("POST", "/v1/auth/link", { body: { email, password } }));
  }

  /** Goes to the provider's sign-in page; back at `redirectTo`, {@link handleRedirect} finishes. */
  signInWithRedirect(provider: string, redirectTo: string = globalThis.location.href): void {
    const target = `${this.http.baseUrl}/v1/auth/oauth/${encodeURIComponent(provider)}?redirect_to=${encodeURIComponent(redirectTo)}`;
    globalThis.location.assign(target);
  }

  /** Finishes a provider sign-in from the tokens in the page's URL fragment (and removes them from it); null when there are none. */
  async handleRedirect(): Promise<SignInResult | null> {
    const location = globalThis.location;
    if (!location?.hash) return null;
    const fragment = new URLSearchParams(location.hash.slice(1));
    const clean = () => globalThis.history?.replaceState(null, "", location.pathname + location.search);
    if (fragment.get("mfa_required") === "true") {
      clean();
      return { mfaRequired: true, ticket: fragment.get("ticket") ?? "", expiresIn: Number(fragment.get("expires_in")) };
    }
    const accessToken = fragment.get("access_token");
    const refreshToken = fragment.get("refresh_token");
    if (!accessToken || !refreshToken) return null;
    clean();
    const user = await this.http.request<User>("GET", "/v1/auth/user", { headers: { authorization: `Bearer ${accessToken}` }, auth: false });
    const answer = { access_token: accessToken, refresh_token: refreshToken, expires_in: Number(fragment.get("expires_in")), user };
    return { mfaRequired: false, user: await this.#start(answer) };
  }

  /** Signs out here and in every tab (`all`: every session of the user, on every device). */
  async signOut(options: { all?: boolean } = {}): Promise<void> {
    await this.ready;
    const session = this.#session;
    await this.#locked(() => this.#save(null));
    if (session) {
      // Best effort: the session is gone here whatever the server answers.
      await this.http
        .request("POST", "/v1/auth/logout", { body: { all: options.all ?? false }, headers: { authorization: `Bearer ${session.access_token}` }, auth: false })
        .catch(() => undefined);
    }
  }

  /** The signed-in user as the server has it now. */
  async reloadUser(): Promise<User> {
    return this.#updateUser(await this.http.request<User>("GET", "/v1/auth/user"));
  }

  /** Changes the caller's e-mail, password or profile `data`. */
  async updateUser(changes: { email?: string; password?: string; data?: Record<string, unknown> }): Promise<User> {
    return this.#updateUser(await this.http.request<User>("PATCH", "/v1/auth/user", { body: changes }));
  }

  /** Deletes the caller's account, then signs out. */
  async deleteUser(): Promise<void> {
    await this.http.request("DELETE", "/v1/auth/user");
    await this.signOut();
  }

  async enrollTotp(): Promise<TotpEnrollment> {
    return this.http.request("POST", "/v1/auth/mfa/totp/enroll", { body: {} });
  }

  /** Turns TOTP on with a first code; the answer is the one-time recovery codes. */
  async confirmTotp(code: string): Promise<string[]> {
    return (await this.http.request<{ recovery_codes: string[] }>("POST", "/v1/auth/mfa/totp/confirm", { body: { code } })).recovery_codes;
  }

  async disableTotp(code: string): Promise<void> {
    await this.http.request("DELETE", "/v1/auth/mfa/totp", { body: { code } });
  }

  async requestVerification(): Promise<void> {
    await this.http.request("POST", "/v1/auth/verify/request", { body: {} });
  }

  async confirmVerification(token: string): Promise<void> {
    await this.http.request("POST", "/v1/auth/verify/confirm", { body: { token }, auth: false });
  }

  /** Mails a password-reset token; answers alike for every address. */
  async recover(email: string): Promise<void> {
    await this.http.request("POST", "/v1/auth/recover", { body: { email }, auth: false });
  }

  async resetPassword(token: string, password: string): Promise<void> {
    await this.http.request("POST", "/v1/auth/reset", { body: { token, password }, auth: false });
  }

  /** Stops timers and the channel to other tabs. */
  close(): void {
    clearTimeout(this.#timer);
    this.#channel?.close();
  }

  async #start(answer: SessionAnswer): Promise<User> {
    const session = toSession(answer);
    await this.#locked(() => this.#save(session));
    return session.user;
  }

  async #updateUser(user: User): Promise<User> {
    await this.#locked(async () => {
      const stored = await this.#load();
      if (stored && stored.user.id === user.id) await this.#save({ ...stored, user });
    });
    return user;
  }

  /** Rotates the refresh token, unless another tab did already. */
  #refresh(seen: Session): Promise<Session | null> {
    return this.#locked(async () => {
      const stored = await this.#load();
      if (!stored || stored.user.id !== seen.user.id) {
        this.#adopt(stored);
        return stored;
      }
      if (stored.refresh_token !== seen.refresh_token && stored.expires_at - Date.now() > 5_000) {
        this.#adopt(stored); // another tab refreshed while this one waited
        return stored;
      }
      let answer: SessionAnswer;
      try {
        answer = await this.http.request<SessionAnswer>("POST", "/v1/auth/refresh", { body: { refresh_token: stored.refresh_token }, auth: false });
      } catch (error) {
        if (error instanceof HearthError && error.code === "unauthenticated") {
          // Revoked, expired or the user disabled: signed out everywhere.
          await this.#save(null);
          return null;
        }
        this.#schedule(10_000); // the server is away: try again soon, keep the session
        throw error;
      }
      const session = toSession(answer);
      await this.#save(session);
      return session;
    });
  }

  /** Stores `session` (null: signed out) for every tab, makes it this tab's, and tells the others. Call it under {@link #locked}. */
  async #save(session: Session | null): Promise<void> {
    if (session) await this.store.set(this.#key, JSON.stringify(session));
    else await this.store.remove(this.#key);
    this.#adopt(session);
    this.#channel?.postMessage("changed");
  }

  async #reload(): Promise<void> {
    this.#adopt(await this.#load());
  }

  async #load(): Promise<Session | null> {
    const text = await this.store.get(this.#key);
    if (!text) return null;
    try {
      return JSON.parse(text) as Session;
    } catch {
      return null;
    }
  }

  /** Makes `session` this tab's, telling listeners what changed. */
  #adopt(session: Session | null): void {
    const before = this.#session;
    this.#session = session;
    clearTimeout(this.#timer);
    if (session) {
      const left = session.expires_at - Date.now();
      this.#schedule(Math.max(0, left - Math.min(REFRESH_MARGIN_MS, left / 4)) + Math.random() * 1_000);
    }
    if (before?.access_token !== session?.access_token) this.#tokenListeners.forEach((listener) => listener());
    if (JSON.stringify(before?.user ?? null) !== JSON.stringify(session?.user ?? null)) {
      this.#listeners.forEach((listener) => listener(session?.user ?? null));
    }
  }

  #schedule(delay: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      const session = this.#session;
      if (session) this.#refresh(session).catch(() => undefined);
    }, delay);
    // In Node, a pending refresh does not keep the process alive.
    (this.#timer as { unref?: () => void }).unref?.();
  }

  /** Runs `work` alone among every tab of the origin (Web Locks), or of this page. */
  #locked<T>(work: () => Promise<T>): Promise<T> {
    const locks = (globalThis.navigator as Navigator | undefined)?.locks;
    if (locks) return locks.request(this.#key, work) as Promise<T>;
    const next = (queues.get(this.#key) ?? Promise.resolve()).then(work, work);
    queues.set(this.#key, next.catch(() => undefined));
    return next;
  }
}

function toSession(answer: SessionAnswer): Session {
  return {
    access_token: answer.access_token,
    refresh_token: answer.refresh_token,
    expires_at: Date.now() + answer.expires_in * 1000,
    user: answer.user,
  };
}
