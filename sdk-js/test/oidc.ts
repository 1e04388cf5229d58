// A minimal OpenID Connect provider on loopback for the sign-in tests: discovery, an
// authorize endpoint that consents at once, a token endpoint with PKCE, Ed25519 id tokens.
import { createHash, generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";

export const CLIENT_ID = "hearth-client";
export const CLIENT_SECRET = "provider-secret";

const b64 = (data: Buffer | string) => Buffer.from(data).toString("base64url");

export class Provider {
  issuer = "";
  subject = "sub-1";
  email = "oidc@example.com";
  private readonly codes = new Map<string, { nonce: string; challenge: string }>();
  private readonly keys = generateKeyPairSync("ed25519");
  private server: HttpServer | undefined;

  static async start(): Promise<Provider> {
    const provider = new Provider();
    provider.server = createServer((request, response) => void provider.handle(request, response));
    await new Promise<void>((resolve) => provider.server!.listen(0, "127.0.0.1", resolve));
    provider.issuer = `http://127.0.0.1:${(provider.server.address() as AddressInfo).port}`;
    return provider;
  }

  close(): void {
    this.server?.close();
  }

  private async handle(request: import("node:http").IncomingMessage, response: import("node:http").ServerResponse): Promise<void> {
    const url = new URL(request.url ?? "/", this.issuer);
    const json = (status: number, body: unknown) => {
      response.writeHead(status, { "content-type": "application/json" });
      response.end(JSON.stringify(body));
    };
    if (url.pathname === "/.well-known/openid-configuration") {
      return json(200, {
        issuer: this.issuer,
        authorization_endpoint: `${this.issuer}/authorize`,
        token_endpoint: `${this.issuer}/token`,
        jwks_uri: `${this.issuer}/jwks`,
        response_types_supported: ["code"],
        id_token_signing_alg_values_supported: ["EdDSA"],
      });
    }
    if (url.pathname === "/jwks") return json(200, { keys: [{ ...this.keys.publicKey.export({ format: "jwk" }), kid: "k1", alg: "EdDSA" }] });
    if (url.pathname === "/authorize") {
      const query = url.searchParams;
      if (query.get("client_id") !== CLIENT_ID || query.get("code_challenge_method") !== "S256") return json(400, { error: "invalid_request" });
      const code = b64(randomBytes(16));
      this.codes.set(code, { nonce: query.get("nonce") ?? "", challenge: query.get("code_challenge") ?? "" });
      response.writeHead(302, { location: `${query.get("redirect_uri")}?code=${code}&state=${encodeURIComponent(query.get("state") ?? "")}` });
      return void response.end();
    }
    if (url.pathname === "/token" && request.method === "POST") {
      let body = "";
      for await (const chunk of request) body += chunk;
      const form = new URLSearchParams(body);
      if (request.headers.authorization !== `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString("base64")}`) return json(401, { error: "invalid_client" });
      const grant = this.codes.get(form.get("code") ?? "");
      this.codes.delete(form.get("code") ?? "");
      if (!grant || b64(createHash("sha256").update(form.get("code_verifier") ?? "").digest()) !== grant.challenge) return json(400, { error: "invalid_grant" });
      const now = Math.floor(Date.now() / 1000);
      const claims = { iss: this.issuer, aud: CLIENT_ID, sub: this.subject, iat: now, exp: now + 300, nonce: grant.nonce, email: this.email, email_verified: true };
      const input = `${b64(JSON.stringify({ alg: "EdDSA", typ: "JWT", kid: "k1" }))}.${b64(JSON.stringify(claims))}`;
      const idToken = `${input}.${b64(sign(null, Buffer.from(input), this.keys.privateKey))}`;
      return json(200, { access_token: "opaque", token_type: "Bearer", expires_in: 300, id_token: idToken });
    }
    json(404, { error: "not found" });
  }
}
