-- Drives Neovim (0.7 API) after the init.lua of docs/editors.md has run: open a spec, wait for the
-- server's diagnostics, ask for hover and completion, save (format on save), fix the error, run
-- :LayerShowGenerated; then open a `@function` stack the server refuses to derive
-- ($LAYERDSL_NVIM_REFUSED), wait for its derivation diagnostic, and take the "Move @function to Block"
-- quick fix as a user does (the cursor on the diagnostic, vim.lsp.buf.code_action(), that item picked in
-- vim.ui.select). Writes what it saw as JSON to $LAYERDSL_NVIM_RESULT; every wait is bounded by
-- $LAYERDSL_NVIM_TIMEOUT_MS, and the first failed step ends the run with exit status 1.
local spec = assert(os.getenv("LAYERDSL_NVIM_SPEC"), "LAYERDSL_NVIM_SPEC not set")
local refused = assert(os.getenv("LAYERDSL_NVIM_REFUSED"), "LAYERDSL_NVIM_REFUSED not set")
local result_path = assert(os.getenv("LAYERDSL_NVIM_RESULT"), "LAYERDSL_NVIM_RESULT not set")
local timeout = tonumber(os.getenv("LAYERDSL_NVIM_TIMEOUT_MS") or "20000")

local result = { steps = {} }

local function finish(failure)
  result.failure = failure
  result.messages = vim.api.nvim_exec("messages", true)
  vim.fn.writefile({ vim.fn.json_encode(result) }, result_path)
  vim.cmd(failure and "cquit 1" or "qall!")
end

local function wait(what, condition)
  if not vim.wait(timeout, condition, 20) then
    error("timed out after " .. timeout .. " ms waiting for " .. what, 0)
  end
end

-- The position of the first `needle` in the buffer (0-based line and byte column, as LSP wants for ASCII).
local function position_of(bufnr, needle)
  for i, line in ipairs(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)) do
    local col = line:find(needle, 1, true)
    if col then
      return { line = i - 1, character = col - 1 }
    end
  end
  error(needle .. " is not in the buffer", 0)
end

-- One request to the buffer's server; its result, or raise the error.
local function request(bufnr, method, params)
  local responses = vim.lsp.buf_request_sync(bufnr, method, params, timeout)
  if not responses then
    error("no answer to " .. method .. " within " .. timeout .. " ms", 0)
  end
  for _, response in pairs(responses) do
    if response.err then
      error(method .. ": " .. vim.inspect(response.err), 0)
    end
    return response.result
  end
  error("no client answered " .. method, 0)
end

local function wait_attached(bufnr)
  wait("the server to attach and initialize", function()
    for _, client in pairs(vim.lsp.buf_get_clients(bufnr)) do
      if client.initialized then
        result.client = client.name
        return true
      end
    end
    return false
  end)
end

local function derivation_diagnostic(bufnr)
  for _, d in ipairs(vim.diagnostic.get(bufnr)) do
    if d.message:find("cannot derive", 1, true) then
      return d
    end
  end
end

local function move_function()
  vim.cmd("edit " .. vim.fn.fnameescape(refused))
  local bufnr = vim.api.nvim_get_current_buf()
  wait_attached(bufnr)
  wait("the derivation diagnostic", function()
    return derivation_diagnostic(bufnr) ~= nil
  end)
  local d = derivation_diagnostic(bufnr)
  result.refusal = { lnum = d.lnum, col = d.col, severity = d.severity, message = d.message }
  result.refusal_count = #vim.diagnostic.get(bufnr)
  table.insert(result.steps, "derivation diagnostic")

  -- The user's pick in the menu of vim.lsp.buf.code_action(): the move, by its title.
  vim.ui.select = function(items, opts, on_choice)
    result.actions = {}
    local chosen
    for _, item in ipairs(items) do
      local title = (opts.format_item(item)) -- the first of gsub's two results
      table.insert(result.actions, title)
      if title == "Move @function to Block" then
        chosen = item
      end
    end
    on_choice(chosen)
  end
  vim.api.nvim_win_set_cursor(0, { d.lnum + 1, d.col })
  vim.lsp.buf.code_action() -- the diagnostics of the cursor's line go with the request
  wait("the code actions", function()
    return result.actions ~= nil
  end)
  result.moved = vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)
  table.insert(result.steps, "code action")
  wait("the diagnostics to clear after the move", function()
    return #vim.diagnostic.get(bufnr) == 0
  end)
  table.insert(result.steps, "refusal cleared")
end

local function run()
  vim.cmd("edit " .. vim.fn.fnameescape(spec))
  local bufnr = vim.api.nvim_get_current_buf()
  result.filetype = vim.bo[bufnr].filetype

  wait_attached(bufnr)
  result.omnifunc = vim.bo[bufnr].omnifunc
  table.insert(result.steps, "attach")

  wait("diagnostics", function()
    return #vim.diagnostic.get(bufnr) > 0
  end)
  result.diagnostics = {}
  for _, d in ipairs(vim.diagnostic.get(bufnr)) do
    table.insert(result.diagnostics, { lnum = d.lnum, col = d.col, severity = d.severity, message = d.message })
  end
  table.insert(result.steps, "diagnostics")

  local document = { uri = vim.uri_from_bufnr(bufnr) }
  local hover = request(bufnr, "textDocument/hover", {
    textDocument = document,
    position = position_of(bufnr, "weight:"),
  })
  result.hover = hover and hover.contents and (hover.contents.value or hover.contents)
  table.insert(result.steps, "hover")

  local completion = request(bufnr, "textDocument/completion", {
    textDocument = document,
    position = position_of(bufnr, "x*"),
  })
  result.completion = {}
  for _, item in ipairs(completion and (completion.items or completion) or {}) do
    table.insert(result.completion, item.label)
  end
  table.insert(result.steps, "completion")

  vim.cmd("write") -- formats, through the BufWritePre autocommand of the init.lua
  result.saved = vim.fn.readfile(spec)
  table.insert(result.steps, "format on save")

  -- Fix the unknown name: the diagnostics must clear.
  local lines = vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)
  for i, line in ipairs(lines) do
    lines[i] = line:gsub("wieght", "weight")
  end
  vim.api.nvim_buf_set_lines(bufnr, 0, -1, false, lines)
  wait("the diagnostics to clear after the fix", function()
    return #vim.diagnostic.get(bufnr) == 0
  end)
  table.insert(result.steps, "diagnostics cleared")

  vim.cmd("LayerShowGenerated")
  wait("the generated Python in a new buffer", function()
    return vim.bo.filetype == "python"
  end)
  result.generated = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  table.insert(result.steps, "show generated")

  move_function()
end

local ok, err = pcall(run)
finish(not ok and tostring(err) or nil)
