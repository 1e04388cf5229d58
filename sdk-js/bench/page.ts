// The page the browser benchmark drives: the client on `window.Hearth`.
import * as Hearth from "../src/index.js";

Object.assign(globalThis, { Hearth });
