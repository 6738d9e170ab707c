// `npm run build`: copy the TextMate grammar from grammars/ (its single source of truth) into
// syntaxes/ and bundle the client with its dependencies into out/extension.js, so the .vsix needs
// no node_modules.
'use strict';

const fs = require('fs');
const path = require('path');
const esbuild = require('esbuild');

const root = path.resolve(__dirname, '..');
const grammarSource = path.resolve(root, '..', '..', 'grammars', 'layer.tmLanguage.json');
const grammarCopy = path.join(root, 'syntaxes', 'layer.tmLanguage.json');

const grammar = JSON.parse(fs.readFileSync(grammarSource, 'utf8'));
if (grammar.scopeName !== 'source.layer') {
  throw new Error(`${grammarSource}: scopeName is ${grammar.scopeName}, expected source.layer`);
}
fs.mkdirSync(path.dirname(grammarCopy), { recursive: true });
fs.copyFileSync(grammarSource, grammarCopy);
console.log(`copied ${path.relative(root, grammarSource)} -> ${path.relative(root, grammarCopy)}`);

esbuild.buildSync({
  entryPoints: [path.join(root, 'src', 'extension.js')],
  outfile: path.join(root, 'out', 'extension.js'),
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node18',
  external: ['vscode'],
  minify: true,
  sourcemap: false,
  logLevel: 'warning',
});
console.log('bundled src/extension.js -> out/extension.js');
