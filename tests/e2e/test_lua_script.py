"""examples/dovecot/appauth.lua under lua5.4 (the Lua Dovecot links) with a stand-in of
Dovecot's Lua API: what Dovecot 2.4 needs that 2.3 does not, tested here where no 2.4 runs.

- The HTTP client's settings: 2.3 takes `request_timeout_msecs` & co. and ignores names it
  does not know; 2.4 refuses those ("Invalid HTTP client setting: ... is unknown setting")
  and takes `request_timeout = "5s"`, `request_max_attempts`. The script must end up with
  a 5 s timeout on both (checked by hand with 2.4.4; the stand-in copies its behaviour).
- The token header, the request body and the mapping of serve's answers to passdb results
  (ok, fail, tempfail, 401, 503 busy) are the same on both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

LUA_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "dovecot" / "appauth.lua"

# Dovecot's Lua API as appauth.lua uses it. STUB_VERSION "2.3": every settings table is
# taken (unknown names ignored, as 2.3 does); "2.4": a table with a 2.3 name raises, as
# 2.4.4 does. The answer of the service comes from STUB_STATUS and STUB_PAYLOAD.
DRIVER = r"""
local version = os.getenv("STUB_VERSION")
local known_24 = { request_absolute_timeout = true, request_timeout = true, request_max_attempts = true }
local log = {}
local function record(line) log[#log + 1] = line end

dovecot = { auth = { PASSDB_RESULT_OK = 0, PASSDB_RESULT_PASSWORD_MISMATCH = 1,
                     PASSDB_RESULT_INTERNAL_FAILURE = 2, PASSDB_RESULT_SCHEME_NOT_AVAILABLE = 3 },
            http = {} }

function dovecot.http.client(settings)
  local names = {}
  for k, v in pairs(settings) do
    if version == "2.4" and not known_24[k] then
      error("Invalid HTTP client setting: " .. k .. " is unknown setting")
    end
    names[#names + 1] = k .. "=" .. tostring(v)
  end
  table.sort(names)
  record("client " .. table.concat(names, ","))
  return {
    request = function(self, r)
      record("request " .. r.method .. " " .. r.url)
      return {
        add_header = function(_, k, v) record("header " .. k .. ": " .. v) end,
        set_payload = function(_, p) record("payload " .. p) end,
        submit = function(_)
          return {
            status = function() return tonumber(os.getenv("STUB_STATUS")) end,
            reason = function() return "Reason" end,
            payload = function() return os.getenv("STUB_PAYLOAD") end,
          }
        end,
      }
    end,
  }
end

dofile(arg[1])
local result, extra = auth_password_verify({ user = "alice@example.com", service = "imap",
  remote_ip = "198.51.100.7", local_ip = "192.0.2.1" }, 'pa"ss\\word')
record("result " .. result)
if type(extra) == "table" then
  local keys = {}
  for k, v in pairs(extra) do keys[#keys + 1] = k .. "=" .. v end
  table.sort(keys)
  record("fields " .. table.concat(keys, ","))
else
  record("message " .. tostring(extra))
end
print(table.concat(log, "\n"))
"""


def run_script(tmp_path: Path, version: str, status: int = 200, payload: object = None,
               token: str | None = "the-token") -> list[str]:
    lua = shutil.which("lua5.4")
    if lua is None:
        pytest.skip("lua5.4 missing (apt-get install lua5.4)")
    driver = tmp_path / "driver.lua"
    driver.write_text(DRIVER)
    env = {"STUB_VERSION": version, "STUB_STATUS": str(status), "STUB_PAYLOAD": json.dumps(payload or {}),
           "APPAUTH_VERIFY_URL": "http://127.0.0.1:8077/verify"}
    if token is not None:
        env["APPAUTH_TOKEN"] = token
    done = subprocess.run([lua, str(driver), str(LUA_SCRIPT)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("version, settings", [
    ("2.3", "client max_attempts=1,request_absolute_timeout_msecs=5000,request_timeout_msecs=5000"),
    ("2.4", "client request_absolute_timeout=5s,request_max_attempts=1,request_timeout=5s"),
])
def test_lua_script_gives_the_http_client_a_5s_timeout_on_23_and_24(tmp_path, version, settings):
    lines = run_script(tmp_path, version, payload={"result": "ok", "user": "alice@example.com"})
    assert [line for line in lines if line.startswith("client ")] == [settings]


def test_lua_script_sends_the_token_and_the_login(tmp_path):
    lines = run_script(tmp_path, "2.4", payload={"result": "fail"})
    assert "request POST http://127.0.0.1:8077/verify" in lines
    assert "header Authorization: Bearer the-token" in lines
    payload = json.loads(next(line for line in lines if line.startswith("payload "))[len("payload "):])
    assert payload == {"user": "alice@example.com", "password": 'pa"ss\\word', "service": "imap",
                       "remote_ip": "198.51.100.7", "local_ip": "192.0.2.1"}
    assert not any(line.startswith("header Authorization") for line in run_script(tmp_path, "2.4", token=None))


@pytest.mark.parametrize("status, payload, result", [
    (200, {"result": "ok", "user": "alice@example.com", "fields": {"userdb_uid": 5000}}, "0"),
    (200, {"result": "fail"}, "1"),
    (200, {"result": "tempfail"}, "2"),  # e.g. throttled: UNAVAILABLE, never "wrong password"
    (503, {"result": "tempfail", "reason": "busy"}, "2"),  # --max-requests in work
    (401, {"result": "tempfail"}, "2"),  # wrong token
    (413, {"error": "request body over 65536 bytes"}, "2"),
])
def test_lua_script_maps_the_answers_of_serve(tmp_path, status, payload, result):
    lines = run_script(tmp_path, "2.4", status=status, payload=payload)
    assert f"result {result}" in lines, lines
    if result == "0":
        assert "fields user=alice@example.com,userdb_uid=5000" in lines
