// `npm test`: run the syntax tests in tests/syntax/ with vscode-tmgrammar-test against the grammar in
// grammars/ (never the copy in syntaxes/), then print a closing "N passed, N failed" line.
'use strict';

const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const bin = require.resolve('vscode-tmgrammar-test/dist/unit.js', { paths: [root] });
const args = [
  bin,
  '--config', 'tests/syntax/tmgrammar-test.json',
  '--grammar', path.join('..', '..', 'grammars', 'layer.tmLanguage.json'),
  ...(process.argv.length > 2 ? process.argv.slice(2) : ['tests/syntax/*.layer']),
];
const run = spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
const text = `${run.stdout || ''}${run.stderr || ''}`;
process.stdout.write(text);
const passed = (text.match(/^✓ /gm) || []).length;
const failed = (text.match(/^✖ /gm) || []).length;
console.log(`grammar: ${passed} passed, ${failed} failed`);
process.exit(run.status === 0 && failed === 0 && passed > 0 ? 0 : 1);
