// @ts-check
'use strict';

// VS Code client for the layerdsl language server (`layerdsl lsp`).
// Highlighting comes from the TextMate grammar alone; everything else
// (diagnostics, hovers, ...) comes from the server, started over stdio.

const vscode = require('vscode');
const { LanguageClient, ExecuteCommandRequest } = require('vscode-languageclient/node');

const LANGUAGE_ID = 'layerdsl';
const SHOW_GENERATED = 'layerdsl.showGenerated';
const GENERATED_SCHEME = 'layerdsl-generated';
/** Server commands that this extension registers itself, so the client must not. */
const OWN_COMMANDS = new Set([SHOW_GENERATED]);

/** @type {LanguageClient | undefined} */
let client;
/** @type {Promise<void> | undefined} */
let starting;
/** @type {vscode.OutputChannel} */
let output;

/** @param {vscode.ExtensionContext} context */
function activate(context) {
  output = vscode.window.createOutputChannel('layerdsl');
  context.subscriptions.push(output);

  const generated = new GeneratedDocuments();
  context.subscriptions.push(
    generated,
    vscode.workspace.registerTextDocumentContentProvider(GENERATED_SCHEME, generated),
    vscode.commands.registerCommand(SHOW_GENERATED, (resource) => showGenerated(generated, resource)),
    vscode.workspace.onDidChangeTextDocument((e) => generated.sourceChanged(e.document)),
    vscode.workspace.onDidCloseTextDocument((doc) => generated.forget(doc.uri)),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('layerdsl.server.command')) {
        restartClient();
      }
    }),
    { dispose: () => void stopClient() },
  );

  startClient();
}

function deactivate() {
  return stopClient();
}

/** @returns {string[]} */
function serverCommand() {
  const value = vscode.workspace.getConfiguration('layerdsl').get('server.command');
  if (Array.isArray(value) && value.length > 0 && value.every((s) => typeof s === 'string' && s !== '')) {
    return value;
  }
  return ['layerdsl', 'lsp'];
}

function startClient() {
  const [command, ...args] = serverCommand();
  const cwd = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  /** @type {import('vscode-languageclient/node').ServerOptions} */
  // No `transport`: with TransportKind.stdio the client would append `--stdio` to the configured
  // command. The server accepts that flag, but a user's own command (a wrapper script) may not; stdio
  // is what an executable speaks when no transport is given.
  const serverOptions = { command, args, options: cwd ? { cwd } : {} };
  /** @type {import('vscode-languageclient/node').LanguageClientOptions} */
  const clientOptions = {
    documentSelector: [
      { scheme: 'file', language: LANGUAGE_ID },
      { scheme: 'untitled', language: LANGUAGE_ID },
    ],
    outputChannel: output,
  };
  const c = new LanguageClient('layerdsl', 'layerdsl language server', serverOptions, clientOptions);
  keepOwnCommands(c);
  client = c;
  starting = c.start().catch((err) => {
    const shown = [command, ...args].join(' ');
    output.appendLine(`Could not start the layerdsl language server (${shown}): ${err && err.message ? err.message : err}`);
    void vscode.window
      .showErrorMessage(
        `layerdsl: could not start the language server \`${shown}\`. Is the layerdsl Python package ` +
          'installed? Otherwise set "layerdsl.server.command".',
        'Open Settings',
      )
      .then((choice) => {
        if (choice) {
          void vscode.commands.executeCommand('workbench.action.openSettings', 'layerdsl.server.command');
        }
      });
    if (client === c) {
      client = undefined;
    }
  });
}

async function stopClient() {
  const c = client;
  client = undefined;
  starting = undefined;
  if (c) {
    try {
      await c.stop();
    } catch (err) {
      // The server may already be gone; nothing else to do.
    }
  }
}

async function restartClient() {
  await stopClient();
  startClient();
}

/**
 * A server that advertises `layerdsl.showGenerated` in executeCommandProvider (pygls does so for every
 * command it registers) would make vscode-languageclient register a VS Code command of that name too,
 * which clashes with ours and breaks the client's start. Leave our commands out of what it registers.
 * @param {LanguageClient} c
 */
function keepOwnCommands(c) {
  const feature = /** @type {any} */ (c.getFeature(ExecuteCommandRequest.method));
  if (!feature || typeof feature.register !== 'function') {
    return;
  }
  const register = feature.register.bind(feature);
  feature.register = (/** @type {any} */ data) => {
    const options = data.registerOptions || {};
    const commands = (options.commands || []).filter((/** @type {string} */ cmd) => !OWN_COMMANDS.has(cmd));
    return register({ ...data, registerOptions: { ...options, commands } });
  };
}

/**
 * Ask the server for the Python it generates from the spec at `source`.
 * @param {vscode.Uri} source
 * @returns {Promise<string>}
 */
async function fetchGenerated(source) {
  if (!client) {
    startClient();
  }
  await starting;
  if (!client || !client.isRunning()) {
    throw new Error('the layerdsl language server is not running');
  }
  const result = await client.sendRequest(ExecuteCommandRequest.type, {
    command: SHOW_GENERATED,
    arguments: [source.toString()],
  });
  if (typeof result !== 'string') {
    throw new Error('the server returned no Python source');
  }
  return result;
}

/**
 * `layerdsl.showGenerated`: open the generated Python beside the spec, read-only.
 * @param {GeneratedDocuments} generated
 * @param {unknown} resource the explorer/editor-title URI when invoked from a menu
 */
async function showGenerated(generated, resource) {
  const source = resource instanceof vscode.Uri ? resource : vscode.window.activeTextEditor?.document.uri;
  if (!source) {
    void vscode.window.showWarningMessage('layerdsl: open a .layer spec first.');
    return;
  }
  // Make sure the server has the document (it is synced on open).
  await vscode.workspace.openTextDocument(source);
  let text;
  try {
    text = await fetchGenerated(source);
  } catch (err) {
    void vscode.window.showErrorMessage(`layerdsl: could not generate Python: ${err && err.message ? err.message : err}`);
    return;
  }
  const target = generated.set(source, text);
  let doc = await vscode.workspace.openTextDocument(target);
  if (doc.languageId !== 'python') {
    doc = await vscode.languages.setTextDocumentLanguage(doc, 'python');
  }
  await vscode.window.showTextDocument(doc, { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true, preview: true });
}

/**
 * Read-only virtual documents (`layerdsl-generated:` URIs, never saved to disk) holding the generated
 * Python; they follow edits to their spec while open.
 * @implements {vscode.TextDocumentContentProvider}
 */
class GeneratedDocuments {
  constructor() {
    /** @type {Map<string, string>} generated URI -> text */
    this.texts = new Map();
    /** @type {Map<string, ReturnType<typeof setTimeout>>} */
    this.timers = new Map();
    this.emitter = new vscode.EventEmitter();
    this.onDidChange = this.emitter.event;
  }

  /** @param {vscode.Uri} source */
  static targetFor(source) {
    const base = source.path.replace(/\.layer$/, '') + '.py';
    return vscode.Uri.from({ scheme: GENERATED_SCHEME, path: base, query: source.toString() });
  }

  /** @param {vscode.Uri} source @param {string} text */
  set(source, text) {
    const target = GeneratedDocuments.targetFor(source);
    const key = target.toString();
    const changed = this.texts.has(key) && this.texts.get(key) !== text;
    this.texts.set(key, text);
    if (changed) {
      this.emitter.fire(target);
    }
    return target;
  }

  /** @param {vscode.Uri} uri */
  async provideTextDocumentContent(uri) {
    const key = uri.toString();
    const known = this.texts.get(key);
    if (known !== undefined) {
      return known;
    }
    const text = await fetchGenerated(vscode.Uri.parse(uri.query));
    this.texts.set(key, text);
    return text;
  }

  /** Re-generate (debounced) when a spec whose Python is open changes. @param {vscode.TextDocument} doc */
  sourceChanged(doc) {
    if (doc.languageId !== LANGUAGE_ID) {
      return;
    }
    const target = GeneratedDocuments.targetFor(doc.uri);
    const key = target.toString();
    const open = vscode.workspace.textDocuments.some((d) => d.uri.toString() === key);
    if (!open) {
      return;
    }
    clearTimeout(this.timers.get(key));
    this.timers.set(
      key,
      setTimeout(() => {
        this.timers.delete(key);
        fetchGenerated(doc.uri).then(
          (text) => this.set(doc.uri, text),
          () => {
            // A spec with errors: keep the last good Python; the diagnostics say what is wrong.
          },
        );
      }, 400),
    );
  }

  /** @param {vscode.Uri} uri */
  forget(uri) {
    if (uri.scheme === GENERATED_SCHEME) {
      this.texts.delete(uri.toString());
    }
  }

  dispose() {
    this.timers.forEach((t) => clearTimeout(t));
    this.emitter.dispose();
  }
}

module.exports = { activate, deactivate };
