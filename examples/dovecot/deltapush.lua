-- Dovecot Lua: the two parts of Delta Chat push that Sieve cannot do, for Dovecot 2.3 and 2.4.
--
-- Where it goes: /etc/dovecot/deltapush.lua, named in conf.d/90-deltapush.conf (mail_lua and
--   the push_notification Lua driver both load it). No compile step; `systemctl reload
--   dovecot` after a change.
-- What to change: nothing, unless deltapush.sieve gives deltapush-mda a --cache-dir.
--
-- 1. The sign of push. Delta Chat from core 2.61 on stores its token only on a server whose
--    server metadata has /shared/vendor/deltachat/maxsmtprecipients (older apps look for
--    XDELTAPUSH, which the .conf announces). Dovecot keeps server metadata per user, so no
--    setting can give it to all: this sets it for a user who has none yet, users added later
--    included, at the end of each IMAP session and at each delivery, so the app finds it from
--    its next login on. Cost: one metadata lookup per IMAP session, and per delivery process
--    and user.
-- 2. The wakeup after the message is stored. deltapush.sieve runs `deltapush-mda --hold`
--    before Dovecot stores the message: it decides, holds the wakeup in the user's cache dir
--    and leaves a waiter in the background. Once the delivery is committed, Dovecot calls
--    dovecot_lua_notify_end_txn below, whose one rename tells the waiter that the message is
--    there. No program is started here: a shell started by the LMTP process would take its
--    real uid 0 back. Cost: one rename per delivery, which fails at once for a user without
--    a held wakeup.

-- deltapush-mda's default cache dir below the user's home; change it with --cache-dir.
local CACHE = "/.cache/deltapush-mda/"
local ENTRY = "/shared/vendor/deltachat/maxsmtprecipients"
-- Delta Chat's own chunk size for recipients of one SMTP transaction: nothing changes but the
-- sign.
local RECIPIENTS = "50"

-- The delivering process, which is the parent of the Sieve program: held wakeups are named
-- by it.
local function own_pid()
  local stat = io.open("/proc/self/stat")
  if stat == nil then
    return nil
  end
  local pid = stat:read("*n")
  stat:close()
  return pid
end

-- mail_lua keeps the script only for users for whom this returns.
function mail_user_created(user)
  return 0, ""
end

-- Users known to have the sign, for as long as this process keeps the script: one lookup per
-- user and process, not per delivery.
local signed = {}

-- The sign of push, for a user whose mailboxes are open.
local function offer_sign(user)
  if signed[user.username] then
    return
  end
  local ok, err = pcall(function()
    if user:metadata_get(ENTRY) == nil then
      user:metadata_set(ENTRY, RECIPIENTS)
    end
  end)
  if ok then
    signed[user.username] = true
  else
    dovecot.i_error("deltapush.lua: " .. ENTRY .. ": " .. tostring(err))
  end
end

function mail_user_deinit_pre(user)
  -- Only an IMAP session surely has its mailboxes here: the user an LMTP connection ends with
  -- may have none, and Dovecot 2.4 asserts on that. Deliveries offer it below.
  if user.service == "imap" then
    offer_sign(user)
  end
  return 0, ""
end

function dovecot_lua_notify_begin_txn(user)
  return { user = user }
end

-- MessageNew: a message delivered by LMTP or LDA (not one saved over IMAP).
function dovecot_lua_notify_event_message_new(ctx, event)
  ctx.uid = event.uid
end

-- Called once the transaction is committed: the message is in the mailbox.
function dovecot_lua_notify_end_txn(ctx, success)
  local pid = own_pid()
  if not (success and ctx.uid and pid) then
    return
  end
  offer_sign(ctx.user)
  local dir = ctx.user.home .. CACHE
  local held = string.format("%sheld.%d", dir, pid)
  -- Fails for a user who has nothing held; a second copy of the message (filed into a
  -- second folder) finds the first one's rename done.
  os.rename(held, string.format("%sstored.%d.%d", dir, pid, ctx.uid))
end
