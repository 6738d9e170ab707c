// `npm run test:client`: load the extension bundle that the .vsix ships, in Node, against a stand-in
// for the `vscode` module; activate it, let vscode-languageclient start the real server, and drive
// it as VS Code would: open a spec with an error and wait for its diagnostic, then hover, completion,
// formatting and the `layerdsl.showGenerated` command through what the extension registered; then a
// `@function` stack that the server refuses to derive (tests/editors/refused_stack.layer): its
// derivation diagnostic, and its "Move @function to Block" quick fix, applied as VS Code applies it.
//
//   node tests/client/run.js [layerdsl.vsix | out/extension.js]
//
// The server command is `layerdsl lsp` (the setting's default), or the JSON array in
// $LAYERDSL_SERVER_COMMAND. Every wait is bounded; the exit status is 1 on any failure, including a
// server that does not start.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const Module = require('module');
const assert = require('assert/strict');
const { createVscode } = require('./vscode-stand-in');

const ROOT = path.resolve(__dirname, '..', '..');
const WAIT_MS = 20000;
const TOTAL_MS = 90000;

const LINEAR = `layer Linear(in_features: int, out_features: int) {
    """y = x @ weight.T + bias."""
    param weight: [out_features, in_features] = xavier_uniform(gain = 1)
    param bias: [out_features] = zeros
    example(in_features = 4, out_features = 3)

    forward(x: [..., in_features]) -> [..., out_features] {
        return x @ transpose(weight, 0, 1) + bias
    }
}
`;

// An unknown name (`wieght`), and a layout that `layerdsl fmt` changes.
const BROKEN = `layer Scale(n: int) {
    param weight: [n] = ones
    example(n = 3)
    forward(x: [B, n]) -> [B, n] {
        return x*wieght
    }
}
`;

const BROKEN_FORMATTED = `layer Scale(n: int) {
    param weight: [n] = ones

    example(n = 3)

    forward(x: [B, n]) -> [B, n] {
        return x * wieght
    }
}
`;

// A `@function` stack refused inside its sub, whose own layer derives (shared with the Neovim test).
const REFUSED = fs.readFileSync(path.resolve(ROOT, '..', '..', 'tests', 'editors', 'refused_stack.layer'), 'utf8');
const MOVED = REFUSED.replace('@function\nlayer Stack(', 'layer Stack(').replace('\nlayer Block(', '\n@function\nlayer Block(');

/** The bundle's source: `extension/out/extension.js` from the .vsix (a zip), or the file itself. */
async function readBundle(file) {
  if (!file.endsWith('.vsix')) {
    return fs.readFileSync(file, 'utf8');
  }
  const yauzl = require('yauzl');
  const zip = await new Promise((resolve, reject) =>
    yauzl.open(file, { lazyEntries: true }, (err, z) => (err ? reject(err) : resolve(z))),
  );
  return new Promise((resolve, reject) => {
    zip.on('entry', (entry) => {
      if (entry.fileName !== 'extension/out/extension.js') {
        zip.readEntry();
        return;
      }
      zip.openReadStream(entry, (err, stream) => {
        if (err) {
          reject(err);
          return;
        }
        const chunks = [];
        stream.on('data', (c) => chunks.push(c));
        stream.on('end', () => {
          zip.close();
          resolve(Buffer.concat(chunks).toString('utf8'));
        });
      });
    });
    zip.on('end', () => reject(new Error(`${file} has no extension/out/extension.js`)));
    zip.readEntry();
  });
}

/** Load the bundle as a CommonJS module whose `require('vscode')` gets the stand-in. */
function loadExtension(source, filename, vscode) {
  const m = new Module(filename, module);
  m.filename = filename;
  m.paths = Module._nodeModulePaths(path.dirname(filename));
  const load = Module._load;
  Module._load = function (request, ...rest) {
    return request === 'vscode' ? vscode : load.call(this, request, ...rest);
  };
  m._compile(source, filename);
  return m.exports;
}

function serverCommand() {
  const value = process.env.LAYERDSL_SERVER_COMMAND;
  return value ? JSON.parse(value) : undefined;
}

/** Resolve with `probe()`'s first truthy value; reject after `ms`, or as soon as the extension shows an error. */
function waitFor(what, testing, probe, ms = WAIT_MS) {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      const errors = testing.messages.filter((m) => m.level === 'error');
      if (errors.length) {
        reject(new Error(`while waiting for ${what}, the extension showed: ${errors.map((e) => e.text).join(' | ')}`));
        return;
      }
      const value = probe();
      if (value) {
        resolve(value);
      } else if (Date.now() - started > ms) {
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      } else {
        setTimeout(tick, 20);
      }
    };
    tick();
  });
}

function positionOf(vscode, text, needle, offset = 1) {
  const at = text.indexOf(needle) + offset;
  assert.ok(at >= offset, `${needle} not in the text`);
  const before = text.slice(0, at);
  return new vscode.Position(before.split('\n').length - 1, at - (before.lastIndexOf('\n') + 1));
}

/** The diagnostics of `uri` in the client's collection (undefined before the first publish). */
function diagnosticsOf(testing, uri) {
  for (const collection of testing.diagnostics.values()) {
    if (collection.has(uri)) {
      return collection.get(uri);
    }
  }
  return undefined;
}

function applyEdits(doc, edits) {
  const sorted = [...edits].sort((a, b) => doc.offsetAt(b.range.start) - doc.offsetAt(a.range.start));
  let text = doc.getText();
  for (const e of sorted) {
    text = text.slice(0, doc.offsetAt(e.range.start)) + e.newText + text.slice(doc.offsetAt(e.range.end));
  }
  return text;
}

const steps = [];
async function step(name, f) {
  const t0 = Date.now();
  await f();
  steps.push(name);
  console.log(`ok ${steps.length} - ${name} (${Date.now() - t0} ms)`);
}

async function main() {
  const target = path.resolve(ROOT, process.argv[2] || 'layerdsl.vsix');
  const source = await readBundle(target);
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'layerdsl-vscode-'));
  fs.writeFileSync(path.join(folder, 'linear.layer'), LINEAR);
  fs.writeFileSync(path.join(folder, 'scale.layer'), BROKEN);
  fs.mkdirSync(path.join(folder, 'stack'));
  fs.writeFileSync(path.join(folder, 'stack', 'stack.layer'), REFUSED);

  const command = serverCommand();
  const configuration = command ? { 'layerdsl.server.command': command } : {};
  const { vscode, testing } = createVscode({ configuration, workspaceFolder: folder });
  console.log(`# bundle: ${path.relative(process.cwd(), target)}; server: ${(command || ['layerdsl', 'lsp']).join(' ')}`);

  // Out of the bundle's own folder, so it cannot fall back on node_modules: it must be self-contained.
  const extension = loadExtension(source, path.join(folder, 'extension.js'), vscode);
  const context = { subscriptions: [], extensionPath: folder, extensionUri: vscode.Uri.file(folder) };
  const ctx = { vscode, testing, context, extension, folder };
  const report = (err) => {
    console.error(`not ok - ${err && err.stack ? err.stack : err}`);
    console.error('# extension messages:', JSON.stringify(testing.messages));
    console.error(`# output channel (the client's log and the server's stderr):\n${testing.output.join('').trimEnd()}`);
  };
  // A server that dies while the client waits for it rejects promises inside the client that nobody awaits.
  process.on('unhandledRejection', (err) => {
    report(`unhandled rejection in the client: ${err && err.message ? err.message : err}`);
    process.exit(1);
  });
  try {
    await run(ctx);
  } catch (err) {
    report(err);
    process.exitCode = 1;
  } finally {
    await Promise.race([Promise.resolve(extension.deactivate()), new Promise((r) => setTimeout(r, 5000))]);
    context.subscriptions.forEach((d) => d.dispose());
    fs.rmSync(folder, { recursive: true, force: true });
  }
  if (testing.missing.size) {
    console.log(`# read but not in the stand-in (optional API probes): ${[...testing.missing].join(', ')}`);
  }
  console.log(process.exitCode ? '# FAILED' : `# ${steps.length} passed`);
}

async function run({ vscode, testing, context, extension, folder }) {
  const scaleUri = vscode.Uri.file(path.join(folder, 'scale.layer'));
  const linearUri = vscode.Uri.file(path.join(folder, 'linear.layer'));
  let scale;
  let linear;

  await step('activate() starts the server and the client registers its providers', async () => {
    extension.activate(context);
    assert.ok(testing.commands.has('layerdsl.showGenerated'), 'layerdsl.showGenerated is registered');
    await waitFor('the client to register a hover provider', testing, () =>
      testing.providers.some((p) => p.kind === 'hover'),
    );
  });

  await step('a spec with an unknown name gets its diagnostic', async () => {
    scale = testing.open(scaleUri, 'layerdsl', BROKEN);
    const diagnostics = await waitFor('diagnostics on scale.layer', testing, () => {
      for (const collection of testing.diagnostics.values()) {
        const ds = collection.get(scaleUri.toString());
        if (ds && ds.length) {
          return ds;
        }
      }
      return undefined;
    });
    assert.equal(diagnostics.length, 1, JSON.stringify(diagnostics));
    const [d] = diagnostics;
    assert.match(d.message, /wieght/);
    assert.equal(d.severity, vscode.DiagnosticSeverity.Error);
    assert.deepEqual([d.range.start.line, d.range.start.character], [4, 17]);
  });

  await step('an edit that fixes the name clears the diagnostic', async () => {
    const start = positionOf(vscode, BROKEN, 'wieght', 0);
    testing.edit(scale, new vscode.Range(start, new vscode.Position(start.line, start.character + 6)), 'weight');
    await waitFor('the diagnostics on scale.layer to clear', testing, () =>
      [...testing.diagnostics.values()].some((c) => (c.get(scaleUri.toString()) || ['stale']).length === 0),
    );
    testing.edit(scale, new vscode.Range(start, new vscode.Position(start.line, start.character + 6)), 'wieght');
    assert.equal(scale.getText(), BROKEN);
  });

  await step('a correct spec gets no diagnostics', async () => {
    linear = testing.open(linearUri, 'layerdsl', LINEAR);
    const ds = await waitFor('diagnostics on linear.layer', testing, () => {
      for (const collection of testing.diagnostics.values()) {
        if (collection.has(linearUri.toString())) {
          return collection.get(linearUri.toString());
        }
      }
      return undefined;
    });
    assert.deepEqual(ds, []);
  });

  const token = new vscode.CancellationTokenSource().token;

  await step('hover on a param shows its declaration and shape', async () => {
    const hover = await testing.provider('hover').provideHover(linear, positionOf(vscode, LINEAR, 'weight, 0'), token);
    assert.ok(hover, 'a hover');
    const text = hover.contents.map((c) => (typeof c === 'string' ? c : c.value)).join('\n');
    assert.match(text, /param weight/);
    assert.match(text, /\[out_features, in_features\]/);
  });

  await step('completion in a forward body offers ops and members', async () => {
    const at = positionOf(vscode, LINEAR, 'return ', 'return '.length);
    const result = await testing
      .provider('completionItem')
      .provideCompletionItems(linear, at, token, { triggerKind: vscode.CompletionTriggerKind.Invoke });
    const items = Array.isArray(result) ? result : result.items;
    const labels = items.map((i) => (typeof i.label === 'string' ? i.label : i.label.label));
    for (const expected of ['relu', 'weight', 'bias', 'x']) {
      assert.ok(labels.includes(expected), `${expected} in completion: ${labels.join(' ')}`);
    }
  });

  await step('go to definition jumps from a use to the param', async () => {
    const result = await testing
      .provider('definition')
      .provideDefinition(linear, positionOf(vscode, LINEAR, 'weight, 0'), token);
    const [location] = Array.isArray(result) ? result : [result];
    const uri = location.uri || location.targetUri;
    const range = location.range || location.targetSelectionRange || location.targetRange;
    assert.equal(uri.toString(), linearUri.toString());
    assert.equal(range.start.line, 2, 'the line of `param weight`');
  });

  await step('formatting returns the layout of layerdsl fmt', async () => {
    const edits = await testing
      .provider('documentFormattingEdit')
      .provideDocumentFormattingEdits(scale, { tabSize: 4, insertSpaces: true }, token);
    assert.ok(edits && edits.length, 'formatting edits');
    assert.equal(applyEdits(scale, edits), BROKEN_FORMATTED);
  });

  await step('layerdsl.showGenerated opens the generated Python beside the spec', async () => {
    await vscode.commands.executeCommand('layerdsl.showGenerated', linearUri);
    assert.deepEqual(
      testing.messages.filter((m) => m.level !== 'information'),
      [],
      'no error or warning shown',
    );
    assert.equal(testing.shown.length, 1, 'one document shown');
    const [doc] = testing.shown;
    assert.equal(doc.uri.scheme, 'layerdsl-generated');
    assert.equal(doc.languageId, 'python');
    assert.match(doc.getText(), /class Linear\(nn\.Module\):/);
    assert.match(doc.getText(), /def forward\(self, x/);
  });

  const stackUri = vscode.Uri.file(path.join(folder, 'stack', 'stack.layer'));
  let stack;
  let refusal;

  await step('a refused @function stack gets its derivation diagnostic, with the hint', async () => {
    stack = testing.open(stackUri, 'layerdsl', REFUSED);
    refusal = await waitFor('the derivation diagnostic on stack.layer', testing, () =>
      (diagnosticsOf(testing, stackUri.toString()) || []).find((d) => /cannot derive/.test(d.message)),
    );
    assert.deepEqual(diagnosticsOf(testing, stackUri.toString()), [refusal], 'the refusal only');
    assert.match(refusal.message, /inlined into 'Stack'/);
    assert.match(refusal.message, /\nhint: put @function on Block instead of Stack: /);
    assert.equal(refusal.severity, vscode.DiagnosticSeverity.Error);
    assert.match(stack.lineAt(refusal.range.start.line).text, /^\s+if \w+ \{$/, 'on an `if` of Block');
  });

  await step('the "Move @function to Block" quick fix, applied, moves the decorator and the refusal goes', async () => {
    const context = { diagnostics: [refusal], triggerKind: vscode.CodeActionTriggerKind.Invoke, only: undefined };
    const actions = await testing.provider('codeActions').provideCodeActions(stack, refusal.range, context, token);
    const titles = (actions || []).map((a) => a.title);
    const move = (actions || []).find((a) => a.title === 'Move @function to Block');
    assert.ok(move, `a "Move @function to Block" action among: ${titles.join(', ')}`);
    assert.equal(move.kind.value, 'quickfix');
    assert.equal(move.isPreferred, true);
    assert.deepEqual(move.diagnostics.map((d) => d.message), [refusal.message]);
    assert.deepEqual(move.edit.entries().map(([uri]) => uri.toString()), [stackUri.toString()]);
    const version = stack.version;
    assert.equal(await vscode.workspace.applyEdit(move.edit), true);
    assert.equal(stack.version, version + 1, 'one change');
    assert.equal(stack.getText(), MOVED);
    await waitFor('the diagnostics on stack.layer to clear (Block derives)', testing, () => {
      const ds = diagnosticsOf(testing, stackUri.toString());
      return ds && ds.length === 0;
    });
  });
}

const timer = setTimeout(() => {
  console.error(`not ok - the whole test took over ${TOTAL_MS} ms`);
  process.exit(1);
}, TOTAL_MS);
main().then(
  () => {
    clearTimeout(timer);
    // The stopped client may leave timers behind; the result is known.
    process.exit(process.exitCode || 0);
  },
  (err) => {
    console.error(`not ok - ${err && err.stack ? err.stack : err}`);
    process.exit(1);
  },
);
