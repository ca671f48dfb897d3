-- The world a script runs in, built once when the engine starts. As in Redis:
--  * a script reads every global through a read-only view; assigning a global, or a field
--    of a library table, is an error ("Attempt to modify a readonly table");
--  * reading a global that does not exist is an error;
--  * the libraries that reach the host (io, os, package, debug, dofile, loadfile, print)
--    are gone, and no binary chunk can be loaded;
--  * redis.call raises a Redis error as a table {err = "CODE message"}, redis.pcall returns
--    it, and pcall hands its text to the caller.
-- The native functions come from the engine (engine.rs).
local natives = ...

local G = _G
local error, type, rawget, rawset, rawequal = error, type, rawget, rawset, rawequal
local setmetatable, getmetatable, tostring, select = setmetatable, getmetatable, tostring, select
local xpcall, pcall, setfenv, getfenv, loadstring = xpcall, pcall, setfenv, getfenv, loadstring
local concat, format = table.concat, string.format

for _, name in ipairs({ 'dofile', 'loadfile', 'print', 'module', 'require', 'debug', 'io', 'os', 'package' }) do
  G[name] = nil
end

-- Read-only views, and the tables they stand for.
local views = setmetatable({}, { __mode = 'k' })

local function refuse()
  error('Attempt to modify a readonly table', 2)
end

local function view(target)
  local proxy = setmetatable({}, { __index = target, __newindex = refuse, __metatable = false })
  views[proxy] = target
  return proxy
end

-- Redis' errors, as tables: "CODE message", the code ERR unless the text starts with "-".
local function failure(text)
  text = tostring(text)
  local code, message
  if text:sub(1, 1) == '-' then
    local space = text:find(' ', 1, true)
    if space then
      code, message = text:sub(2, space - 1), text:sub(space + 1)
    else
      code, message = 'ERR', text:sub(2)
    end
  else
    code, message = 'ERR', text
  end
  message = message:gsub('^[\r\n]+', ''):gsub('[\r\n]+$', '')
  return { err = code .. ' ' .. message }
end

local function fail(text)
  error(failure(text), 0)
end

-- The native that runs a command, (reply, failed), set by the engine; `running` is true
-- while a script runs, `resp` is its RESP version.
local run_state = { resp = 2, running = false }

local redis = {}
-- `command` returns the reply, whether it failed, and whether the reply is still to be
-- taken (replies other than numbers, booleans, nil and strings).
function redis.call(...)
  if not run_state.running then
    fail('redis.call/pcall can only be called inside a script invocation')
  end
  local resp = run_state.resp
  local reply, failed, pending = run_state.command(resp, ...)
  if pending then
    reply, failed = run_state.take_reply(resp)
  end
  if failed then
    error(reply, 0)
  end
  return reply
end

function redis.pcall(...)
  if not run_state.running then
    fail('redis.call/pcall can only be called inside a script invocation')
  end
  local resp = run_state.resp
  local reply, failed, pending = run_state.command(resp, ...)
  if pending then
    reply = run_state.take_reply(resp)
  end
  return reply
end

function redis.setresp(...)
  if select('#', ...) ~= 1 then
    fail('redis.setresp() requires one argument.')
  end
  local resp = tonumber((...))
  if resp ~= 2 and resp ~= 3 then
    fail('RESP version must be 2 or 3.')
  end
  run_state.resp = resp
end

function redis.error_reply(...)
  local text = ...
  if select('#', ...) ~= 1 or type(text) ~= 'string' then
    return failure('wrong number or type of arguments')
  end
  if text:sub(1, 1) ~= '-' then
    text = '-' .. text
  end
  return failure(text)
end

function redis.status_reply(...)
  local text = ...
  if select('#', ...) ~= 1 or type(text) ~= 'string' then
    return failure('wrong number or type of arguments')
  end
  return { ok = text }
end

function redis.sha1hex(...)
  if select('#', ...) ~= 1 then
    fail('wrong number of arguments')
  end
  return natives.sha1hex(tostring((...)))
end

redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3

function redis.log(...)
  local argc = select('#', ...)
  if argc < 2 then
    fail('redis.log() requires two arguments or more.')
  end
  local level = ...
  if type(level) ~= 'number' and not (type(level) == 'string' and tonumber(level)) then
    fail('First argument must be a number (log level).')
  end
  level = tonumber(level)
  if level < 0 or level > 3 then
    fail('Invalid debug level.')
  end
  local parts = {}
  for i = 2, argc do
    local part = select(i, ...)
    if type(part) == 'string' or type(part) == 'number' then
      parts[#parts + 1] = tostring(part)
    end
  end
  natives.log(level, concat(parts, ' '))
end

-- Effects always replicate to the partner, so replication flags are checked and accepted.
redis.REPL_NONE, redis.REPL_AOF, redis.REPL_SLAVE, redis.REPL_REPLICA, redis.REPL_ALL = 0, 1, 2, 2, 3

function redis.set_repl(...)
  if not run_state.running then
    fail('redis.set_repl can only be called inside a script invocation')
  end
  if select('#', ...) ~= 1 then
    fail('redis.set_repl() requires two arguments.')
  end
  local flags = tonumber((...)) or 0
  if flags < 0 or flags > 3 or flags % 1 ~= 0 then
    fail('Invalid replication flags. Use REPL_AOF, REPL_REPLICA, REPL_ALL or REPL_NONE.')
  end
end

function redis.replicate_commands()
  return true
end

function redis.breakpoint()
  return false
end

function redis.debug() end

function redis.acl_check_cmd(...)
  if not run_state.running then
    fail('redis.acl_check_cmd can only be called inside a script invocation')
  end
  if select('#', ...) == 0 then
    fail('Please specify at least one argument for this redis lib call')
  end
  if not natives.is_command(tostring((...))) then
    fail('Invalid command passed to redis.acl_check_cmd()')
  end
  return true
end

redis.REDIS_VERSION = natives.version
redis.REDIS_VERSION_NUM = natives.version_num

G.redis = redis

-- pcall hands a Redis error's text to the caller, as Redis' pcall does.
local function pcall_result(ok, ...)
  if not ok then
    local err = ...
    if type(err) == 'table' then
      local text = rawget(err, 'err')
      if type(text) == 'string' or type(text) == 'number' then
        return false, text
      end
    end
  end
  return ok, ...
end

G.pcall = function(f, ...)
  return pcall_result(pcall(f, ...))
end

math.random = natives.random
math.randomseed = natives.randomseed

-- The libraries in Rust answer (ok, ...) or (false, message); here a failure is raised as
-- a C library raises it, at the caller's line (level 3: past this function and the C
-- trampoline).
local function pack(...)
  return { n = select('#', ...), ... }
end

local function lib_function(native)
  return function(...)
    local results = pack(native(...))
    if not results[1] then
      error(results[2], 3)
    end
    return unpack(results, 2, results.n)
  end
end

for _, name in ipairs({ 'bit', 'cjson', 'cmsgpack', 'struct' }) do
  local raw, lib = G['__' .. name], {}
  for key, value in pairs(raw) do
    if type(value) == 'function' then
      lib[key] = lib_function(value)
    else
      lib[key] = value
    end
  end
  G['__' .. name] = nil
  G[name] = lib
end

-- Every function a script calls is a C function: a script's `return f()` is then no tail
-- call that would drop the script's line from an error raised inside (as Redis' own
-- functions are C).
local trampoline = natives.trampoline
for _, lib in ipairs({ redis, G.bit, G.cjson, G.cmsgpack, G.struct }) do
  for key, value in pairs(lib) do
    if type(value) == 'function' then
      lib[key] = trampoline(value)
    end
  end
end
G.pcall = trampoline(G.pcall)

-- Every table a script can reach is seen through a read-only view.
for _, name in ipairs({ 'string', 'table', 'math', 'coroutine', 'redis', 'bit', 'cjson', 'cmsgpack', 'struct' }) do
  if type(G[name]) == 'table' then
    G[name] = view(G[name])
  end
end
getmetatable('').__index = G.string

local env = view(G)
G._G = env

setmetatable(G, {
  __index = function(_, name)
    error(format("Script attempted to access nonexistent global variable '%s'", tostring(name)), 2)
  end,
  __metatable = false,
})

G.rawset = function(t, k, v)
  if views[t] then
    error('Attempt to modify a readonly table', 2)
  end
  return rawset(t, k, v)
end

G.setmetatable = function(t, mt)
  if views[t] then
    error('Attempt to modify a readonly table', 2)
  end
  return setmetatable(t, mt)
end

-- The global environment of a function (or of the running thread) is the read-only view.
G.getfenv = function(f)
  if f == nil then
    f = 1
  end
  if type(f) == 'number' and f > 0 then
    f = f + 1
  end
  local found = getfenv(f)
  if rawequal(found, G) then
    return env
  end
  return found
end

G.setfenv = function(f, t)
  if type(f) == 'number' then
    if f == 0 then
      error("'setfenv' cannot change the environment of the running thread", 2)
    end
    f = f + 1
  end
  if views[t] == G then
    t = env
  end
  return setfenv(f, t)
end

local function load_text(text, name)
  if type(text) == 'string' and text:byte(1) == 27 then
    return nil, 'binary chunks are not allowed'
  end
  local chunk, err = loadstring(text, name)
  if chunk then
    setfenv(chunk, env)
  end
  return chunk, err
end

G.loadstring = load_text

G.load = function(reader, name)
  if type(reader) == 'string' then
    return load_text(reader, name)
  end
  local pieces = {}
  while true do
    local piece = reader()
    if piece == nil or piece == '' then
      break
    end
    if type(piece) ~= 'string' then
      return nil, 'reader function must return a string'
    end
    pieces[#pieces + 1] = piece
  end
  return load_text(concat(pieces), name)
end

-- Runs a compiled script with the engine's error handler, which adds where it failed.
local handler = natives.handler
local function run(script)
  return xpcall(script, handler)
end

return { env = env, globals = G, state = run_state, run = run, failure = failure }
