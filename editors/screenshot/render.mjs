// Render a .layer spec to a self-contained HTML page, highlighted by shiki with the project's TextMate
// grammar (grammars/layer.tmLanguage.json), and print the window size that fits it ("WIDTH,HEIGHT").
//
//   node render.mjs SPEC.layer OUT.html [THEME] [ANNOTATIONS.json]
//
// With ANNOTATIONS.json (what spec_annotations.py prints: layerdsl's diagnostics and inlay hints), the page
// looks like an editor showing them: line numbers, a squiggly underline at each diagnostic's span with a
// hover-like box holding its message and hint below the line, and the inferred shapes greyed after each
// binding.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHighlighter } from 'shiki';

const here = dirname(fileURLToPath(import.meta.url));
const [spec, out, theme = 'light-plus', annotationsPath] = process.argv.slice(2);
if (!spec || !out) {
  console.error('usage: node render.mjs SPEC.layer OUT.html [THEME] [ANNOTATIONS.json]');
  process.exit(2);
}

const grammar = JSON.parse(readFileSync(resolve(here, '..', '..', 'grammars', 'layer.tmLanguage.json'), 'utf8'));
const highlighter = await createHighlighter({
  themes: [theme],
  langs: [{ ...grammar, name: 'layer', aliases: ['layerdsl'] }],
});
const code = readFileSync(spec, 'utf8').replace(/\n+$/, '');

// Layout: monospace glyphs are 0.6em wide (DejaVu Sans Mono: 0.602em).
const fontPx = 15;
const linePx = 22;
const padPx = 24;
const charPx = fontPx * 0.602;
const fonts = '"DejaVu Sans Mono", "Liberation Mono", monospace';
const lines = code.split('\n');
const bg = highlighter.getTheme(theme).bg;
const diagnosticSource = 'layerdsl'; // shown in a hover box, as an editor names the diagnostic's source

const page = annotationsPath
  ? annotatedPage(JSON.parse(readFileSync(annotationsPath, 'utf8')))
  : plainPage();
writeFileSync(out, page.html);
console.log(`${page.width},${page.height}`);

function plainPage() {
  const columns = Math.max(...lines.map((l) => l.length));
  return {
    width: Math.ceil(columns * charPx + 2 * padPx + 8),
    height: lines.length * linePx + 2 * padPx,
    html: document(
      `pre.shiki { margin: 0; padding: ${padPx}px; font-family: ${fonts};
              font-size: ${fontPx}px; line-height: ${linePx}px; white-space: pre; overflow: hidden; }`,
      highlighter.codeToHtml(code, { lang: 'layer', theme }),
    ),
  };
}

function annotatedPage({ diagnostics, hints }) {
  const { tokens } = highlighter.codeToTokens(code, { lang: 'layer', theme });
  const gutterCols = String(lines.length).length + 3;
  const hintPx = fontPx * 0.87;
  const boxChromePx = 6 + 8 + 2 * 5 + 2; // margins, padding, border of a hover box
  let columns = 0; // the widest row, in glyphs of the code font
  const rows = [];
  tokens.forEach((lineTokens, i) => {
    const line = i + 1;
    const lineHints = hints.filter((h) => h.line === line);
    const underlined = diagnostics.flatMap((d) => underlineOn(d, line, lines[i].length));
    const failing = diagnostics.some((d) => d.line === line);
    const number = `<span class="gutter${failing ? ' failing' : ''}">${line}</span>`;
    rows.push(`<div class="row">${number}${codeLine(lineTokens, lineHints, underlined)}</div>`);
    const hintCols = lineHints.reduce((n, h) => n + (h.label.length + 1.5) * (hintPx / fontPx), 0);
    columns = Math.max(columns, gutterCols + lines[i].length + hintCols);
    for (const d of diagnostics.filter((d) => d.line === line)) {
      rows.push(hoverBox(d, gutterCols));
      const head = `${d.severity}: ${d.message}  ${diagnosticSource}`.length;
      const text = Math.max(head, d.hint ? `hint: ${d.hint}`.length : 0);
      columns = Math.max(columns, gutterCols + d.col - 1 + text + 4); // + the box's padding and border
    }
  });
  const boxRows = diagnostics.reduce((n, d) => n + (d.hint ? 2 : 1), 0);
  return {
    width: Math.ceil(columns * charPx + 2 * padPx + 16),
    height: (lines.length + boxRows) * linePx + diagnostics.length * boxChromePx + 2 * padPx,
    html: document(
      `.code { padding: ${padPx}px; font-family: ${fonts}; font-size: ${fontPx}px; line-height: ${linePx}px; }
  .row { height: ${linePx}px; white-space: pre; }
  .gutter { display: inline-block; width: ${(gutterCols - 2) * charPx}px; margin-right: ${2 * charPx}px;
            text-align: right; color: #a0a0a0; }
  .gutter.failing { color: #e51400; font-weight: bold; }
  .squiggle { text-decoration: underline wavy #e51400; text-decoration-skip-ink: none;
              text-decoration-thickness: 1.5px; text-underline-offset: 4px; }
  .inlay { font-size: ${hintPx}px; color: #6f6f6f; background: #ececec; border-radius: 4px;
           padding: 1px 4px; margin: 0 2px; }
  .hover { position: relative; display: inline-block; margin: 6px 0 8px;
           padding: 5px 12px 5px 10px; white-space: pre; line-height: ${linePx}px; background: #f8f8f8;
           border: 1px solid #c8c8c8; border-left: 3px solid #e51400; border-radius: 3px;
           box-shadow: 0 2px 6px rgba(0, 0, 0, 0.16); color: #1f1f1f; }
  .hover .severity { color: #e51400; font-weight: bold; }
  .hover .source { color: #8a8a8a; }
  .hover .hint { color: #0b6e4f; }`,
      `<div class="code">\n${rows.join('\n')}\n</div>`,
    ),
  };
}

// The columns [from, to) of line `line` (0-based, end exclusive) that diagnostic `d` underlines.
function underlineOn(d, line, length) {
  if (line < d.line || line > d.end_line) return [];
  const from = line === d.line ? d.col - 1 : 0;
  const to = line === d.end_line ? d.end_col - 1 : length;
  return [[from, Math.max(to, from + 1)]];
}

function codeLine(lineTokens, lineHints, underlined) {
  // Cut the tokens at every column where an underline starts or ends or a hint goes.
  const cuts = new Set([...underlined.flat(), ...lineHints.map((h) => h.col - 1)]);
  let html = '';
  let col = 0;
  const hintsAt = (c) =>
    lineHints.filter((h) => h.col - 1 === c).map((h) => `<span class="inlay">${escape(h.label)}</span>`).join('');
  for (const token of lineTokens) {
    const text = token.content;
    let start = 0;
    for (let k = 1; k <= text.length; k++) {
      if (k < text.length && !cuts.has(col + k)) continue;
      html += hintsAt(col + start); // each column starts at most one piece
      const piece = text.slice(start, k);
      const squiggly = underlined.some(([a, b]) => col + start >= a && col + start < b);
      html += `<span style="${tokenStyle(token)}"${squiggly ? ' class="squiggle"' : ''}>${escape(piece)}</span>`;
      start = k;
    }
    col += text.length;
  }
  return html + hintsAt(col);
}

function tokenStyle(token) {
  const style = [`color: ${token.color}`];
  if (token.fontStyle & 1) style.push('font-style: italic');
  if (token.fontStyle & 2) style.push('font-weight: bold');
  return style.join('; ');
}

function hoverBox(d, gutterCols) {
  const left = (gutterCols + d.col - 1) * charPx - 12;
  const head = `<span class="severity">${escape(d.severity)}</span>: ${escape(d.message)}  <span class="source">${diagnosticSource}</span>`;
  const hint = d.hint ? `\n<span class="hint">hint: ${escape(d.hint)}</span>` : '';
  return `<div style="padding-left: ${Math.max(0, left)}px"><div class="hover">${head}${hint}</div></div>`;
}

function escape(text) {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function document(style, body) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>${escape(spec)}</title>
<style>
  html, body { margin: 0; padding: 0; }
  body { background: ${bg}; }
  ${style}
</style></head>
<body>${body}</body></html>
`;
}
