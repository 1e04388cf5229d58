// A callable that proxies an external API with a key the client never sees. The key
// and the upstream live in `hearth.toml` ([functions.secrets]); the upstream host must
// be in `functions.fetch_allow`.
import { onCall, HearthError } from "hearth";

export const weather = onCall(async (data, ctx) => {
  if (!ctx.auth) throw new HearthError("unauthenticated", "sign in first");
  const city = typeof data?.city === "string" ? data.city.trim() : "";
  if (!/^[\p{L} .'-]{1,64}$/u.test(city)) throw new HearthError("invalid-argument", "`city` is a city name");
  const base = ctx.secrets.WEATHER_API_URL;
  const answer = await ctx.fetch(`${base}/v1/current?city=${encodeURIComponent(city)}`, {
    headers: { "x-api-key": ctx.secrets.WEATHER_API_KEY },
  });
  if (!answer.ok) throw new HearthError("unavailable", `the weather service answered ${answer.status}`);
  return { city, weather: await answer.json() };
});
