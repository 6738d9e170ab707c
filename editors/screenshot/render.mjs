// Render a .layer spec to a self-contained HTML page, highlighted by shiki with the project's TextMate
// grammar (grammars/layer.tmLanguage.json), and print the window size that fits it ("WIDTH,HEIGHT").
//
//   node render.mjs SPEC.layer OUT.html [THEME]
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHighlighter } from 'shiki';

const here = dirname(fileURLToPath(import.meta.url));
const [spec, out, theme = 'light-plus'] = process.argv.slice(2);
if (!spec || !out) {
  console.error('usage: node render.mjs SPEC.layer OUT.html [THEME]');
  process.exit(2);
}

const grammar = JSON.parse(readFileSync(resolve(here, '..', '..', 'grammars', 'layer.tmLanguage.json'), 'utf8'));
const highlighter = await createHighlighter({
  themes: [theme],
  langs: [{ ...grammar, name: 'layer', aliases: ['layerdsl'] }],
});
const code = readFileSync(spec, 'utf8').replace(/\n+$/, '');
const html = highlighter.codeToHtml(code, { lang: 'layer', theme });

// Layout: monospace glyphs are 0.6em wide (DejaVu Sans Mono: 0.602em).
const fontPx = 15;
const linePx = 22;
const padPx = 24;
const lines = code.split('\n');
const columns = Math.max(...lines.map((l) => l.length));
const width = Math.ceil(columns * fontPx * 0.602 + 2 * padPx + 8);
const height = lines.length * linePx + 2 * padPx;

writeFileSync(
  out,
  `<!doctype html>
<html><head><meta charset="utf-8"><title>${spec}</title>
<style>
  html, body { margin: 0; padding: 0; }
  body { background: ${highlighter.getTheme(theme).bg}; }
  pre.shiki { margin: 0; padding: ${padPx}px; font-family: "DejaVu Sans Mono", "Liberation Mono", monospace;
              font-size: ${fontPx}px; line-height: ${linePx}px; white-space: pre; overflow: hidden; }
</style></head>
<body>${html}</body></html>
`,
);
console.log(`${width},${height}`);
