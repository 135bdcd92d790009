// ESLint flat config shipped with Assay: core rules only, so it needs no plugins and no
// network. Browser globals are declared so that `no-undef` stays meaningful.
//
// LLM-written frontends are ES modules with JSX (React/Vite): `.js`, `.mjs` and `.jsx`
// parse as modules with JSX on; `.cjs` as CommonJS. A file that still does not parse is
// reported as the model's own error (`parse-error`), never as "no issues".
const globals = {
        window: "readonly", document: "readonly", console: "readonly", fetch: "readonly",
        localStorage: "readonly", sessionStorage: "readonly", alert: "readonly",
        setTimeout: "readonly", clearTimeout: "readonly", setInterval: "readonly",
        clearInterval: "readonly", URL: "readonly", URLSearchParams: "readonly",
        FormData: "readonly", Headers: "readonly", Request: "readonly", Response: "readonly",
        navigator: "readonly", location: "readonly", history: "readonly", Event: "readonly",
        CustomEvent: "readonly", WebSocket: "readonly", EventSource: "readonly",
        module: "writable", require: "readonly", process: "readonly",
        exports: "writable", __dirname: "readonly", __filename: "readonly",
        Buffer: "readonly", globalThis: "readonly", structuredClone: "readonly",
        AbortController: "readonly", Blob: "readonly", File: "readonly",
        FileReader: "readonly", Image: "readonly", HTMLElement: "readonly",
        requestAnimationFrame: "readonly", cancelAnimationFrame: "readonly",
        IntersectionObserver: "readonly", MutationObserver: "readonly",
        ResizeObserver: "readonly", crypto: "readonly", performance: "readonly",
        confirm: "readonly", prompt: "readonly", atob: "readonly", btoa: "readonly",
        TextEncoder: "readonly", TextDecoder: "readonly", WebSocketStream: "readonly",
};

const rules = {
      "no-eval": "error",
      "no-implied-eval": "error",
      "no-new-func": "error",
      "no-script-url": "error",
      "no-undef": "error",
      // `import React` is what the classic JSX runtime needed; an unused `catch (err)`
      // is style. Neither is worth a finding.
      "no-unused-vars": ["warn", { varsIgnorePattern: "^React$", caughtErrors: "none" }],
      "no-unreachable": "warn",
      "no-dupe-keys": "error",
      "no-redeclare": "error",
      "eqeqeq": "warn",
      "no-var": "warn",
};

// TypeScript through @typescript-eslint/parser (pinned in tools/package.json); Assay
// fills in where it is installed. Without it, TypeScript files are left out, and the
// tool's run says so.
const tsParser = await import("__TS_PARSER__").then((m) => m.default ?? m).catch(() => null);
const typescript = tsParser
  ? [
      {
        files: ["**/*.ts", "**/*.tsx", "**/*.mts", "**/*.cts"],
        languageOptions: {
          parser: tsParser,
          ecmaVersion: "latest",
          sourceType: "module",
          parserOptions: { ecmaFeatures: { jsx: true } },
          globals,
        },
        // The core rules that know nothing of types would misfire on TypeScript.
        rules: Object.fromEntries(
          Object.entries(rules).filter(([name]) => !["no-undef", "no-unused-vars", "no-redeclare"].includes(name)),
        ),
      },
    ]
  : [];

export default [
  ...typescript,
  {
    files: ["**/*.js", "**/*.mjs", "**/*.jsx"],
    languageOptions: {
      ecmaVersion: "latest",
      sourceType: "module",
      parserOptions: { ecmaFeatures: { jsx: true } },
      globals,
    },
    rules,
  },
  {
    files: ["**/*.cjs"],
    languageOptions: { ecmaVersion: "latest", sourceType: "commonjs", globals },
    rules,
  },
];
