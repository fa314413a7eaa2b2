// Builds the playground into dist/: app.js (the bundle of src/main.js with CodeMirror), app.css
// and index.html, plus dist/SOURCES.sha256, the hash of every input, by which
// TestDistIsCurrent (embed_test.go) tells a stale dist/ without npm.
//
//   cd web/playground && npm ci && npm run build
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";

const inputs = ["build.mjs", "package-lock.json", ...readdirSync("src").map((f) => "src/" + f)].sort();

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  outfile: "dist/app.js",
  legalComments: "linked",
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/app.css", "dist/app.css");

const h = createHash("sha256");
for (const f of inputs) h.update(f + "\0").update(readFileSync(f)).update("\0");
writeFileSync("dist/SOURCES.sha256", h.digest("hex") + "\n");
