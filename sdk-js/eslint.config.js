import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/", "build-test/", "node_modules/", ".bench/"] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  {
    files: ["bench/*.mjs"],
    languageOptions: { globals: { location: "readonly", performance: "readonly", globalThis: "readonly", setTimeout: "readonly" } },
  },
  {
    languageOptions: { globals: { console: "readonly", process: "readonly" } },
    rules: {
      "@typescript-eslint/no-non-null-assertion": "off",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
    },
  },
);
