// Builds the console's bundle: src/main.ts -> OUT/console.js, src/console.css -> OUT/console.css
// (OUT: the first argument, default static). Reproducible: the same sources and the esbuild
// pinned in package-lock.json give the same bytes (tests/gateway/console/test_bundle.py).
import { build } from "esbuild";

const out = process.argv[2] ?? "static";
const common = { bundle: true, minify: true, charset: "utf8", legalComments: "none",
                 logLevel: "warning" };
await build({ ...common, entryPoints: ["src/main.ts"], outfile: `${out}/console.js`,
              format: "iife", target: "es2020" });
await build({ ...common, entryPoints: ["src/console.css"], outfile: `${out}/console.css` });
