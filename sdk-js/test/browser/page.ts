// A blank page with the client on `window.Hearth`, for tests that drive it directly.
import * as Hearth from "../../src/index.js";

Object.assign(globalThis, { Hearth });
