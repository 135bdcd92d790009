// ESLint flat config shipped with Assay: core rules only, so it needs no plugins and no
// network. Browser globals are declared so that `no-undef` stays meaningful.
export default [
  {
    files: ["**/*.js", "**/*.mjs", "**/*.cjs", "**/*.jsx"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "script",
      globals: {
        window: "readonly", document: "readonly", console: "readonly", fetch: "readonly",
        localStorage: "readonly", sessionStorage: "readonly", alert: "readonly",
        setTimeout: "readonly", clearTimeout: "readonly", setInterval: "readonly",
        clearInterval: "readonly", URL: "readonly", URLSearchParams: "readonly",
        FormData: "readonly", Headers: "readonly", Request: "readonly", Response: "readonly",
        navigator: "readonly", location: "readonly", history: "readonly", Event: "readonly",
        CustomEvent: "readonly", WebSocket: "readonly", EventSource: "readonly",
        module: "writable", require: "readonly", process: "readonly",
      },
    },
    rules: {
      "no-eval": "error",
      "no-implied-eval": "error",
      "no-new-func": "error",
      "no-script-url": "error",
      "no-undef": "error",
      "no-unused-vars": "warn",
      "no-unreachable": "warn",
      "no-dupe-keys": "error",
      "no-redeclare": "error",
      "eqeqeq": "warn",
      "no-var": "warn",
    },
  },
];
