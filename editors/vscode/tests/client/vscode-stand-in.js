// A minimal stand-in for the `vscode` module: enough of the API for the extension's activate() and for
// vscode-languageclient to start the server, sync documents and register its providers. What the
// extension and the client hand to VS Code is recorded on `testing`, for the test to drive and inspect.
// Anything of the API the code touches that is not modelled here is reported in `testing.missing`.
'use strict';

class Disposable {
  /** @param {() => void} [onDispose] */
  constructor(onDispose) {
    this.onDispose = onDispose;
  }

  static from(...disposables) {
    return new Disposable(() => disposables.forEach((d) => d && d.dispose()));
  }

  dispose() {
    const f = this.onDispose;
    this.onDispose = undefined;
    if (f) {
      f();
    }
  }
}

class EventEmitter {
  constructor() {
    this.listeners = new Set();
    this.event = (listener, thisArg, disposables) => {
      const bound = listener.bind(thisArg);
      this.listeners.add(bound);
      const d = new Disposable(() => this.listeners.delete(bound));
      if (Array.isArray(disposables)) {
        disposables.push(d);
      }
      return d;
    };
  }

  fire(value) {
    for (const listener of [...this.listeners]) {
      listener(value);
    }
  }

  dispose() {
    this.listeners.clear();
  }
}

const URI_PATTERN = /^([a-zA-Z][\w+.-]*):(?:\/\/([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$/;

class Uri {
  constructor(scheme, authority, path, query, fragment) {
    Object.assign(this, { scheme, authority, path, query, fragment });
  }

  static parse(value) {
    const m = URI_PATTERN.exec(value);
    if (!m) {
      throw new Error(`stand-in Uri.parse: not a URI: ${value}`);
    }
    const [, scheme, authority = '', path, query = '', fragment = ''] = m;
    return new Uri(scheme, decodeURIComponent(authority), decodeURIComponent(path), decodeURIComponent(query), decodeURIComponent(fragment));
  }

  static file(path) {
    return new Uri('file', '', path, '', '');
  }

  static from({ scheme, authority = '', path = '', query = '', fragment = '' }) {
    return new Uri(scheme, authority, path, query, fragment);
  }

  get fsPath() {
    return this.path;
  }

  with(change) {
    return Uri.from({ ...this, ...change });
  }

  toString() {
    const path = this.path.split('/').map(encodeURIComponent).join('/');
    const authority = this.authority || this.scheme === 'file' ? `//${this.authority}` : '';
    const query = this.query ? `?${encodeURIComponent(this.query)}` : '';
    const fragment = this.fragment ? `#${encodeURIComponent(this.fragment)}` : '';
    return `${this.scheme}:${authority}${path}${query}${fragment}`;
  }

  toJSON() {
    return this.toString();
  }
}

class Position {
  constructor(line, character) {
    this.line = line;
    this.character = character;
  }

  isEqual(other) {
    return this.line === other.line && this.character === other.character;
  }
}

class Range {
  constructor(a, b, c, d) {
    if (typeof a === 'number') {
      this.start = new Position(a, b);
      this.end = new Position(c, d);
    } else {
      this.start = a;
      this.end = b;
    }
  }

  get isEmpty() {
    return this.start.isEqual(this.end);
  }
}

/** A class that keeps what it was given: for results the test reads but does not compute with. */
function record(name, fields) {
  return {
    [name]: class {
      constructor(...args) {
        fields.forEach((field, i) => {
          this[field] = args[i];
        });
      }
    },
  }[name];
}

class MarkdownString {
  constructor(value = '', supportThemeIcons = false) {
    this.value = value;
    this.supportThemeIcons = supportThemeIcons;
  }

  appendMarkdown(value) {
    this.value += value;
    return this;
  }

  appendText(value) {
    this.value += value.replace(/[\\`*_{}[\]()#+\-.!]/g, '\\$&');
    return this;
  }

  appendCodeblock(code, language = '') {
    this.value += `\n\`\`\`${language}\n${code}\n\`\`\`\n`;
    return this;
  }
}

class Hover {
  constructor(contents, range) {
    this.contents = Array.isArray(contents) ? contents : [contents];
    this.range = range;
  }
}

class TextEdit {
  constructor(range, newText) {
    this.range = range;
    this.newText = newText;
  }

  static replace(range, newText) {
    return new TextEdit(range, newText);
  }
}

/** Text edits by document, as a code action carries them (what vscode-languageclient builds: set, replace). */
class WorkspaceEdit {
  constructor() {
    /** @type {Map<string, { uri: Uri, edits: TextEdit[] }>} */
    this.byUri = new Map();
  }

  get size() {
    return this.byUri.size;
  }

  set(uri, edits) {
    this.byUri.set(uri.toString(), { uri, edits: [...(edits || [])] });
  }

  get(uri) {
    const entry = this.byUri.get(uri.toString());
    return entry ? entry.edits : [];
  }

  has(uri) {
    return this.byUri.has(uri.toString());
  }

  replace(uri, range, newText) {
    this.set(uri, [...this.get(uri), new TextEdit(range, newText)]);
  }

  insert(uri, position, newText) {
    this.replace(uri, new Range(position, position), newText);
  }

  delete(uri, range) {
    this.replace(uri, range, '');
  }

  entries() {
    return [...this.byUri.values()].map(({ uri, edits }) => [uri, edits]);
  }
}

class CancellationTokenSource {
  constructor() {
    const emitter = new EventEmitter();
    this.emitter = emitter;
    this.token = { isCancellationRequested: false, onCancellationRequested: emitter.event };
  }

  cancel() {
    if (!this.token.isCancellationRequested) {
      this.token.isCancellationRequested = true;
      this.emitter.fire(undefined);
    }
  }

  dispose() {
    this.emitter.dispose();
  }
}

class CancellationError extends Error {}

/** A numeric enum: VS Code's values are the names' positions in the list. */
function enumOf(names, first = 0) {
  return Object.freeze(Object.fromEntries(names.map((n, i) => [n, i + first])));
}

const CompletionItemKind = enumOf(
  'Text Method Function Constructor Field Variable Class Interface Module Property Unit Value Enum Keyword Snippet Color File Reference Folder EnumMember Constant Struct Event Operator TypeParameter User Issue'.split(' '),
);
const SymbolKind = enumOf(
  'File Module Namespace Package Class Method Property Field Constructor Enum Interface Function Variable Constant String Number Boolean Array Object Key Null EnumMember Struct Event Operator TypeParameter'.split(' '),
);

class CodeActionKind {
  constructor(value) {
    this.value = value;
  }

  append(part) {
    return new CodeActionKind(this.value ? `${this.value}.${part}` : part);
  }

  contains(other) {
    return this.value === other.value || other.value.startsWith(`${this.value}.`);
  }
}
for (const [name, value] of Object.entries({
  Empty: '',
  QuickFix: 'quickfix',
  Refactor: 'refactor',
  RefactorExtract: 'refactor.extract',
  RefactorInline: 'refactor.inline',
  RefactorRewrite: 'refactor.rewrite',
  Source: 'source',
  SourceOrganizeImports: 'source.organizeImports',
  SourceFixAll: 'source.fixAll',
})) {
  CodeActionKind[name] = new CodeActionKind(value);
}

/** An open document, as VS Code's TextDocument shows it (text with `\n` line ends). */
class TextDocument {
  constructor(uri, languageId, text, version = 1) {
    this.uri = uri;
    this.languageId = languageId;
    this.text = text;
    this.version = version;
    this.isClosed = false;
    this.isDirty = false;
    this.isUntitled = uri.scheme === 'untitled';
    this.eol = 1;
  }

  get fileName() {
    return this.uri.fsPath;
  }

  get lineCount() {
    return this.text.split('\n').length;
  }

  getText(range) {
    if (!range) {
      return this.text;
    }
    return this.text.slice(this.offsetAt(range.start), this.offsetAt(range.end));
  }

  offsetAt(position) {
    const lines = this.text.split('\n');
    let offset = 0;
    for (let i = 0; i < position.line && i < lines.length; i++) {
      offset += lines[i].length + 1;
    }
    return Math.min(offset + position.character, this.text.length);
  }

  positionAt(offset) {
    const before = this.text.slice(0, offset);
    const line = before.split('\n').length - 1;
    return new Position(line, offset - (before.lastIndexOf('\n') + 1));
  }

  lineAt(lineOrPosition) {
    const line = typeof lineOrPosition === 'number' ? lineOrPosition : lineOrPosition.line;
    const text = this.text.split('\n')[line];
    return { lineNumber: line, text, range: new Range(line, 0, line, text.length) };
  }
}

/**
 * @param {{ configuration?: Record<string, unknown>, workspaceFolder?: string }} options
 *   configuration: setting values by full name (`layerdsl.server.command`); workspaceFolder: its path.
 */
function createVscode(options = {}) {
  const configuration = options.configuration || {};
  const testing = {
    /** @type {Map<string, Function>} */
    commands: new Map(),
    /** @type {{ kind: string, selector: unknown, provider: any }[]} */
    providers: [],
    /** @type {Map<string, Map<string, any[]>>} collection name -> URI -> diagnostics */
    diagnostics: new Map(),
    diagnosticsChanged: new EventEmitter(),
    /** @type {Map<string, any>} scheme -> TextDocumentContentProvider */
    contentProviders: new Map(),
    /** @type {{ level: string, text: string }[]} */
    messages: [],
    /** @type {TextDocument[]} documents shown with window.showTextDocument */
    shown: [],
    output: [],
    missing: new Set(),
    events: {
      open: new EventEmitter(),
      close: new EventEmitter(),
      change: new EventEmitter(),
      save: new EventEmitter(),
      willSave: new EventEmitter(),
      configuration: new EventEmitter(),
      workspaceFolders: new EventEmitter(),
      activeEditor: new EventEmitter(),
    },
    /** @type {TextDocument[]} */
    documents: [],
    /** Open a document as VS Code does: add it to workspace.textDocuments, then fire onDidOpenTextDocument. */
    open(uri, languageId, text) {
      const doc = new TextDocument(uri, languageId, text);
      testing.documents.push(doc);
      testing.events.open.fire(doc);
      return doc;
    },
    /** Replace `range` of an open document with `text`, as typing does: a new version, then onDidChangeTextDocument. */
    edit(doc, range, text) {
      testing.editMany(doc, [new TextEdit(range, text)]);
    },
    /**
     * Make `edits` (ranges in the current text, not overlapping) as one change of the document, as VS Code
     * applies a workspace edit: one new version, one onDidChangeTextDocument whose changes come last first
     * (so that each range holds in the text the changes before it leave).
     */
    editMany(doc, edits) {
      const sorted = [...edits].sort((a, b) => doc.offsetAt(b.range.start) - doc.offsetAt(a.range.start));
      const contentChanges = [];
      for (const { range, newText } of sorted) {
        const start = doc.offsetAt(range.start);
        const end = doc.offsetAt(range.end);
        doc.text = doc.text.slice(0, start) + newText + doc.text.slice(end);
        contentChanges.push({ range, rangeOffset: start, rangeLength: end - start, text: newText });
      }
      doc.version += 1;
      doc.isDirty = true;
      testing.events.change.fire({ document: doc, contentChanges, reason: undefined });
    },
    /** The provider of `kind` (e.g. `hover`) that the client registered for the document, or throw. */
    provider(kind) {
      const found = testing.providers.find((p) => p.kind === kind);
      if (!found) {
        const have = testing.providers.map((p) => p.kind).join(', ');
        throw new Error(`no ${kind} provider was registered (registered: ${have || 'none'})`);
      }
      return found.provider;
    },
  };

  const noEvent = new EventEmitter().event;

  function register(kind) {
    return (selector, provider, ...rest) => {
      const entry = { kind, selector, provider, rest };
      testing.providers.push(entry);
      return new Disposable(() => testing.providers.splice(testing.providers.indexOf(entry), 1));
    };
  }

  function message(level) {
    return (text, ...items) => {
      testing.messages.push({ level, text });
      return Promise.resolve(undefined);
    };
  }

  /** languages.match: a score > 0 when the document matches the selector (scheme and language only). */
  function match(selector, doc) {
    const selectors = Array.isArray(selector) ? selector : [selector];
    return selectors.some((s) =>
      typeof s === 'string'
        ? s === doc.languageId
        : (!s.language || s.language === doc.languageId) && (!s.scheme || s.scheme === doc.uri.scheme),
    )
      ? 10
      : 0;
  }

  const folderPath = options.workspaceFolder;
  const workspaceFolder = folderPath ? { uri: Uri.file(folderPath), name: 'workspace', index: 0 } : undefined;

  const workspace = {
    get workspaceFolders() {
      return workspaceFolder ? [workspaceFolder] : undefined;
    },
    getWorkspaceFolder: (uri) =>
      workspaceFolder && uri.scheme === 'file' && uri.path.startsWith(`${folderPath}/`) ? workspaceFolder : undefined,
    get textDocuments() {
      return testing.documents.filter((d) => !d.isClosed);
    },
    notebookDocuments: [],
    getConfiguration(section) {
      const prefix = section ? `${section}.` : '';
      return {
        get: (key, defaultValue) => {
          const full = prefix + key;
          return full in configuration ? configuration[full] : defaultValue;
        },
        has: (key) => prefix + key in configuration,
        inspect: () => undefined,
        update: () => Promise.resolve(),
      };
    },
    onDidOpenTextDocument: testing.events.open.event,
    onDidCloseTextDocument: testing.events.close.event,
    onDidChangeTextDocument: testing.events.change.event,
    onDidSaveTextDocument: testing.events.save.event,
    onWillSaveTextDocument: testing.events.willSave.event,
    onDidChangeConfiguration: testing.events.configuration.event,
    onDidChangeWorkspaceFolders: testing.events.workspaceFolders.event,
    onDidOpenNotebookDocument: noEvent,
    onDidCloseNotebookDocument: noEvent,
    onDidChangeNotebookDocument: noEvent,
    onDidSaveNotebookDocument: noEvent,
    onDidCreateFiles: noEvent,
    onDidRenameFiles: noEvent,
    onDidDeleteFiles: noEvent,
    onWillCreateFiles: noEvent,
    onWillRenameFiles: noEvent,
    onWillDeleteFiles: noEvent,
    createFileSystemWatcher: () => ({
      onDidCreate: noEvent,
      onDidChange: noEvent,
      onDidDelete: noEvent,
      dispose() {},
    }),
    registerTextDocumentContentProvider(scheme, provider) {
      testing.contentProviders.set(scheme, provider);
      return new Disposable(() => testing.contentProviders.delete(scheme));
    },
    /** An open document, else a file read from disk or a virtual one from its scheme's content provider. */
    async openTextDocument(uri) {
      const known = workspace.textDocuments.find((d) => d.uri.toString() === uri.toString());
      if (known) {
        return known;
      }
      let text;
      const provider = testing.contentProviders.get(uri.scheme);
      if (provider) {
        text = await provider.provideTextDocumentContent(uri, new CancellationTokenSource().token);
      } else if (uri.scheme === 'file') {
        text = require('fs').readFileSync(uri.fsPath, 'utf8');
      } else {
        throw new Error(`stand-in openTextDocument: cannot open ${uri}`);
      }
      const languageId = uri.path.endsWith('.layer') ? 'layerdsl' : 'plaintext';
      return testing.open(uri, languageId, text);
    },
    /** A workspace edit of open documents (what a code action carries); false when one is not open. */
    async applyEdit(edit) {
      const entries = edit.entries();
      const docs = entries.map(([uri]) => workspace.textDocuments.find((d) => d.uri.toString() === uri.toString()));
      if (docs.some((d) => !d)) {
        return false;
      }
      entries.forEach(([, edits], i) => testing.editMany(docs[i], edits));
      return true;
    },
  };

  const languages = {
    match,
    createDiagnosticCollection(name = '') {
      const entries = new Map();
      testing.diagnostics.set(name, entries);
      const changed = (uri) => testing.diagnosticsChanged.fire({ name, uri: uri.toString() });
      return {
        name,
        set(uriOrEntries, diagnostics) {
          const pairs = Array.isArray(uriOrEntries) ? uriOrEntries : [[uriOrEntries, diagnostics]];
          for (const [uri, ds] of pairs) {
            entries.set(uri.toString(), ds || []);
            changed(uri);
          }
        },
        get: (uri) => entries.get(uri.toString()),
        has: (uri) => entries.has(uri.toString()),
        delete(uri) {
          entries.delete(uri.toString());
          changed(uri);
        },
        clear: () => entries.clear(),
        forEach: (f) => entries.forEach((ds, uri) => f(Uri.parse(uri), ds)),
        dispose: () => entries.clear(),
      };
    },
    async setTextDocumentLanguage(doc, languageId) {
      doc.languageId = languageId;
      return doc;
    },
    getLanguages: () => Promise.resolve(['layerdsl', 'python', 'plaintext']),
  };
  for (const kind of [
    'Hover',
    'CompletionItem',
    'Definition',
    'Declaration',
    'TypeDefinition',
    'Implementation',
    'Reference',
    'DocumentHighlight',
    'DocumentSymbol',
    'WorkspaceSymbol',
    'CodeActions',
    'CodeLens',
    'DocumentFormattingEdit',
    'DocumentRangeFormattingEdit',
    'OnTypeFormattingEdit',
    'Rename',
    'DocumentLink',
    'Color',
    'FoldingRange',
    'SelectionRange',
    'CallHierarchy',
    'TypeHierarchy',
    'SignatureHelp',
    'DocumentSemanticTokens',
    'DocumentRangeSemanticTokens',
    'LinkedEditingRange',
    'InlayHints',
    'InlineValues',
    'InlineCompletionItem',
  ]) {
    const name = kind[0].toLowerCase() + kind.slice(1);
    languages[`register${kind}Provider`] = register(name);
  }

  const window = {
    createOutputChannel(name) {
      const channel = {
        name,
        append: (text) => testing.output.push(text),
        appendLine: (text) => testing.output.push(`${text}\n`),
        replace: () => {},
        clear: () => {},
        show: () => {},
        hide: () => {},
        dispose: () => {},
      };
      // The client's logging channel uses these when it is a LogOutputChannel.
      for (const level of ['trace', 'debug', 'info', 'warn', 'error']) {
        channel[level] = (text) => testing.output.push(`[${level}] ${text}\n`);
      }
      return channel;
    },
    showErrorMessage: message('error'),
    showWarningMessage: message('warning'),
    showInformationMessage: message('information'),
    async showTextDocument(doc) {
      testing.shown.push(doc);
      return { document: doc };
    },
    activeTextEditor: undefined,
    visibleTextEditors: [],
    onDidChangeActiveTextEditor: testing.events.activeEditor.event,
    onDidChangeVisibleTextEditors: noEvent,
    tabGroups: { all: [], onDidChangeTabs: noEvent, onDidChangeTabGroups: noEvent },
    withProgress: (opts, task) => task({ report() {} }, new CancellationTokenSource().token),
  };

  const commands = {
    registerCommand(id, callback, thisArg) {
      if (testing.commands.has(id)) {
        throw new Error(`command '${id}' already exists`);
      }
      testing.commands.set(id, callback.bind(thisArg));
      return new Disposable(() => testing.commands.delete(id));
    },
    async executeCommand(id, ...args) {
      const callback = testing.commands.get(id);
      if (!callback) {
        throw new Error(`command '${id}' not found`);
      }
      return callback(...args);
    },
    getCommands: () => Promise.resolve([...testing.commands.keys()]),
  };

  const api = {
    version: '1.82.0',
    env: { appName: 'vscode stand-in', language: 'en', machineId: 'test', openExternal: () => Promise.resolve(false) },
    extensions: { getExtension: () => undefined, all: [] },
    workspace,
    languages,
    window,
    commands,
    Disposable,
    EventEmitter,
    Uri,
    Position,
    Range,
    Selection: Range,
    Location: record('Location', ['uri', 'range']),
    Diagnostic: record('Diagnostic', ['range', 'message', 'severity']),
    DiagnosticRelatedInformation: record('DiagnosticRelatedInformation', ['location', 'message']),
    DiagnosticSeverity: enumOf(['Error', 'Warning', 'Information', 'Hint']),
    DiagnosticTag: enumOf(['Unnecessary', 'Deprecated'], 1),
    MarkdownString,
    Hover,
    CompletionItem: record('CompletionItem', ['label', 'kind']),
    CompletionList: record('CompletionList', ['items', 'isIncomplete']),
    CompletionItemKind,
    CompletionItemTag: enumOf(['Deprecated'], 1),
    CompletionTriggerKind: enumOf(['Invoke', 'TriggerCharacter', 'TriggerForIncompleteCompletions']),
    SnippetString: record('SnippetString', ['value']),
    TextEdit,
    WorkspaceEdit,
    SymbolInformation: record('SymbolInformation', ['name', 'kind', 'containerName', 'location']),
    DocumentSymbol: record('DocumentSymbol', ['name', 'detail', 'kind', 'range', 'selectionRange']),
    SymbolKind,
    SymbolTag: enumOf(['Deprecated'], 1),
    DocumentHighlight: record('DocumentHighlight', ['range', 'kind']),
    DocumentHighlightKind: enumOf(['Text', 'Read', 'Write']),
    CodeAction: record('CodeAction', ['title', 'kind']),
    CodeActionKind,
    CodeActionTriggerKind: enumOf(['Invoke', 'Automatic'], 1),
    CodeLens: record('CodeLens', ['range', 'command']),
    FoldingRange: record('FoldingRange', ['start', 'end', 'kind']),
    FoldingRangeKind: enumOf(['Comment', 'Imports', 'Region'], 1),
    SignatureHelp: record('SignatureHelp', []),
    SignatureInformation: record('SignatureInformation', ['label', 'documentation']),
    ParameterInformation: record('ParameterInformation', ['label', 'documentation']),
    SignatureHelpTriggerKind: enumOf(['Invoke', 'TriggerCharacter', 'ContentChange'], 1),
    SemanticTokens: record('SemanticTokens', ['data', 'resultId']),
    SemanticTokensLegend: record('SemanticTokensLegend', ['tokenTypes', 'tokenModifiers']),
    InlayHint: record('InlayHint', ['position', 'label', 'kind']),
    InlayHintKind: enumOf(['Type', 'Parameter'], 1),
    TextDocumentSaveReason: enumOf(['Manual', 'AfterDelay', 'FocusOut'], 1),
    FileType: { Unknown: 0, File: 1, Directory: 2, SymbolicLink: 64 },
    ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
    ViewColumn: { Active: -1, Beside: -2, One: 1, Two: 2 },
    RelativePattern: record('RelativePattern', ['base', 'pattern']),
    CancellationTokenSource,
    CancellationError,
    TabInputText: record('TabInputText', ['uri']),
    TabInputTextDiff: record('TabInputTextDiff', ['original', 'modified']),
    TabInputCustom: record('TabInputCustom', ['uri', 'viewType']),
    NotebookCellKind: enumOf(['Markup', 'Code'], 1),
  };
  // Result types of features this server does not offer; the client subclasses some of them at load.
  for (const name of [
    'DocumentLink',
    'CallHierarchyItem',
    'CallHierarchyIncomingCall',
    'CallHierarchyOutgoingCall',
    'TypeHierarchyItem',
    'Color',
    'ColorInformation',
    'ColorPresentation',
    'SelectionRange',
    'LinkedEditingRanges',
    'InlineValueText',
    'InlineValueVariableLookup',
    'InlineValueEvaluatableExpression',
    'InlineCompletionItem',
    'InlineCompletionList',
    'InlayHintLabelPart',
    'SemanticTokensEdit',
    'SemanticTokensEdits',
  ]) {
    api[name] = record(name, []);
  }

  // Report what the code reads and this stand-in lacks (a probe for an optional API reads as missing too).
  const vscode = new Proxy(api, {
    get(target, name) {
      if (!(name in target) && typeof name === 'string' && name !== 'then' && name !== '__esModule') {
        testing.missing.add(name);
      }
      return target[name];
    },
  });
  return { vscode, testing, TextDocument };
}

module.exports = { createVscode };
