-- Dovecot Lua passdb: app passwords checked by `dovecot-appauth serve` (POST /verify).
-- For Dovecot 2.4 (no checkpassword driver) and 2.3 alike: the same policy, throttling,
-- audit and recording as the checkpassword program. Tested with Dovecot 2.3.19
-- (Debian 12, dovecot-auth-lua) by tests/e2e/test_end_to_end_serve.py, and by hand with
-- Dovecot 2.4.4 built from source.
--
-- Dovecot 2.3:                                 Dovecot 2.4:
-- passdb {                                     passdb lua {
--   driver = lua                                 lua_file = /etc/dovecot/appauth.lua
--   args = file=/etc/dovecot/appauth.lua       }
--          blocking=yes                        userdb prefetch {
-- }                                            }
-- userdb {
--   driver = prefetch   # the userdb_* fields of [userdb] in dovecot-appauth's config
-- }
--
-- Right password: OK with `user` and the userdb_* fields the service returns. Wrong
-- password, unknown user, refused by a policy or the audit: PASSWORD_MISMATCH. The
-- service down, slow (over the 5 s request timeout), busy (503: --max-requests in work),
-- throttling the client (tempfail, answered at once) or answering anything else:
-- INTERNAL_FAILURE (the client sees [UNAVAILABLE], never "wrong password").

local verify_url = os.getenv("APPAUTH_VERIFY_URL") or "http://127.0.0.1:8077/verify"
-- the serve --token-file secret: serve requires one on TCP (without it: HTTP 401, so
-- every login gets UNAVAILABLE, never a wrong-password answer)
local token = os.getenv("APPAUTH_TOKEN")

-- Dovecot 2.3 and 2.4 name the HTTP client's settings differently, and 2.3 silently ignores
-- names it does not know (a misspelt timeout left the 60 s default: a hung service held each
-- login, and an auth worker, that long) while 2.4 refuses them. So: the 2.3 names first, and
-- the 2.4 names (lib-http's settings without `http_client_`) when 2.4 refuses those (seen
-- with 2.4.4: "Invalid HTTP client setting: request_absolute_timeout_msecs is unknown
-- setting", then the 2.4 names time a hung service out after 5 s). Trying 2.4's names
-- first would not work: 2.3 would accept them silently and keep its 60 s default.
-- 5 s: keep it above the service's own deadlines (audit, Nextcloud).
local function new_http_client()
  local ok, client = pcall(dovecot.http.client, {
    request_absolute_timeout_msecs = 5000;  -- the whole request, connect included
    request_timeout_msecs = 5000;
    max_attempts = 1;
  })
  if ok then
    return client
  end
  return dovecot.http.client {
    request_absolute_timeout = "5s";
    request_timeout = "5s";
    request_max_attempts = 1;
  }
end

local http_client = new_http_client()

-- --- a small JSON encoder/decoder (Dovecot's Lua has no JSON library) ---------------
local function json_string(s)
  s = tostring(s or "")
  s = s:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. s .. '"'
end

local function utf8_char(code)
  if code < 0x80 then return string.char(code) end
  if code < 0x800 then
    return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
  end
  return string.char(0xE0 + math.floor(code / 0x1000), 0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
end

local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function json_decode(text)
  local pos = 1
  local value

  local function skip() pos = text:find("[^ \t\r\n]", pos) or (#text + 1) end

  -- a run of plain characters is copied at once (one find, one sub), not one by one:
  -- this runs in Dovecot's auth worker on every login
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local stop = text:find('["\\]', pos)
      if not stop then error("unterminated string") end
      if stop > pos then out[#out + 1] = text:sub(pos, stop - 1) end
      pos = stop
      if text:sub(pos, pos) == '"' then pos = pos + 1; return table.concat(out) end
      local e = text:sub(pos + 1, pos + 1)  -- after a backslash
      if e == "u" then
        out[#out + 1] = utf8_char(tonumber(text:sub(pos + 2, pos + 5), 16) or 63)
        pos = pos + 6
      else
        out[#out + 1] = escapes[e] or e
        pos = pos + 2
      end
    end
  end

  function value()
    skip()
    local c = text:sub(pos, pos)
    if c == '"' then return str() end
    if c == "{" or c == "[" then
      local close, result, n = (c == "{") and "}" or "]", {}, 0
      pos = pos + 1
      skip()
      if text:sub(pos, pos) == close then pos = pos + 1; return result end
      while true do
        if close == "}" then
          skip()
          local key = str()
          skip()
          pos = pos + 1  -- ':'
          result[key] = value()
        else
          n = n + 1
          result[n] = value()
        end
        skip()
        local sep = text:sub(pos, pos)
        pos = pos + 1
        if sep == close then return result end
        if sep ~= "," then error("bad JSON") end
      end
    end
    local word = text:match("^[%w%.%-+]+", pos)
    if not word then error("bad JSON") end
    pos = pos + #word
    if word == "true" then return true elseif word == "false" then return false
    elseif word == "null" then return nil end
    return tonumber(word)
  end

  return value()
end

-- --- the passdb ----------------------------------------------------------------------
function script_init()
  return 0
end

function script_deinit()
end

local function verify(req, password)
  local request = http_client:request {
    url = verify_url;
    method = "POST";
  }
  request:add_header("Content-Type", "application/json")
  if token then
    request:add_header("Authorization", "Bearer " .. token)
  end
  request:set_payload("{" ..
    '"user":' .. json_string(req.user) ..
    ',"password":' .. json_string(password) ..
    ',"service":' .. json_string(req.service) ..
    ',"remote_ip":' .. json_string(req.remote_ip) ..
    ',"local_ip":' .. json_string(req.local_ip) .. "}")
  local response = request:submit()
  local status = response:status()
  if status ~= 200 then
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE,
      "appauth: " .. verify_url .. ": HTTP " .. status .. " " .. (response:reason() or "")
  end
  local ok, answer = pcall(json_decode, response:payload() or "")
  if not ok or type(answer) ~= "table" then
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "appauth: " .. verify_url .. ": not a JSON answer"
  end
  if answer.result == "ok" then
    local fields = {}
    if type(answer.fields) == "table" then
      for k, v in pairs(answer.fields) do
        fields[k] = tostring(v)
      end
    end
    if type(answer.user) == "string" then
      fields.user = answer.user
    end
    return dovecot.auth.PASSDB_RESULT_OK, fields
  elseif answer.result == "fail" then
    return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, ""
  end
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "appauth: temporary failure (see dovecot-appauth serve's log)"
end

-- plaintext mechanisms (auth_mechanisms = plain login): Dovecot hands us the password
function auth_password_verify(req, password)
  return verify(req, password)
end

-- app-password hashes never leave dovecot-appauth: no credentials lookups
function auth_passdb_lookup(req)
  return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE,
    "appauth: only plaintext mechanisms are supported (auth_mechanisms = plain login)"
end
