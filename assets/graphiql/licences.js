// Writes the licence of every npm package whose code is in graphiql.min.js (its source map
// names them), from an `npm install graphiql@VERSION` tree.
const fs = require("fs"), path = require("path");
const [tree, map] = process.argv.slice(2);
const sources = JSON.parse(fs.readFileSync(map, "utf8")).sources;
const names = new Set();
for (const s of sources) {
  const i = s.lastIndexOf("node_modules/");
  if (i < 0) continue;
  const parts = s.slice(i + 13).split("/");
  names.add(parts[0].startsWith("@") ? parts[0] + "/" + parts[1] : parts[0]);
}
// The graphiql monorepo's own packages, bundled from its source.
for (const n of ["@graphiql/react", "@graphiql/toolkit", "@graphiql/plugin-doc-explorer", "@graphiql/plugin-history", "codemirror-graphql", "graphql-language-service"]) names.add(n);
function find(name) {
  const out = [];
  (function walk(dir) {
    const p = path.join(dir, "node_modules", name, "package.json");
    if (fs.existsSync(p)) out.push(path.dirname(p));
    const nm = path.join(dir, "node_modules");
    if (!fs.existsSync(nm)) return;
    for (const e of fs.readdirSync(nm)) {
      if (e.startsWith(".")) continue;
      if (e.startsWith("@")) { for (const f of fs.readdirSync(path.join(nm, e))) walk(path.join(nm, e, f)); }
      else walk(path.join(nm, e));
    }
  })(tree);
  return out;
}
let text = "", missing = [];
for (const name of [...names].sort()) {
  const dirs = find(name);
  if (!dirs.length) { missing.push(name); continue; }
  const seen = new Set();
  for (const dir of dirs) {
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
    const key = pkg.name + "@" + pkg.version;
    if (seen.has(key)) continue; seen.add(key);
    const file = fs.readdirSync(dir).find(f => /^(licen[cs]e|copying)/i.test(f));
    const licence = typeof pkg.license === "string" ? pkg.license : JSON.stringify(pkg.license);
    text += "=".repeat(72) + "\n" + key + " (" + licence + ")\n" + "=".repeat(72) + "\n";
    text += file ? fs.readFileSync(path.join(dir, file), "utf8").trim() + "\n\n" : "(the package ships no licence file; package.json says " + licence + ")\n\n";
  }
}
process.stdout.write(text);
if (missing.length) process.stderr.write("not in the tree: " + missing.join(" ") + "\n");
